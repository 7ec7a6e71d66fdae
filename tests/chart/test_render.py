"""The chart renders what the operator, the workers and the dev harness expect, and refuses bad values."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from kubetask import model, settings
from tests.chart.conftest import CHART, DB, helm, of_kind, pod_specs, render, render_error
from tests.conftest import ROOT

BUNDLED = ("--set", "postgresql.enabled=true")
#: `--set pools[0].x=…` replaces the whole list (Helm merges maps, not lists): name the pool too.
POOL = ("--set", "pools[0].name=default")
#: What `helm install` sees once the Queue CRD is served (without it no Queue can be rendered).
QUEUE_API = ("--api-versions", "kubetask.io/v1alpha1/Queue")


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def _workers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [obj for obj in of_kind(objects, "Deployment")
            if obj["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"]


def _operator(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (operator,) = [obj for obj in of_kind(objects, "Deployment")
                   if obj["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"]
    return operator


# -- lint and the values schema --------------------------------------------------------------


@pytest.mark.parametrize("values", [(), DB, BUNDLED], ids=["defaults", "existing-secret", "bundled-postgresql"])
def test_helm_lint_strict_passes(values: tuple[str, ...]) -> None:
    helm("lint", "--strict", str(CHART), *values)


def test_renders_with_the_defaults_plus_a_database() -> None:
    """The defaults need one value (where the database URL lives); with it, everything renders."""
    kinds = sorted({obj["kind"] for obj in render(*DB)})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment", "NetworkPolicy",
                     "PodDisruptionBudget", "Role", "RoleBinding", "Service", "ServiceAccount"]


@pytest.mark.parametrize(("setting", "key"), [
    ("pools[0].maxReplica=3", "maxReplica"),
    ("operatorr.replicas=1", "operatorr"),
    ("operator.replica=2", "replica"),
    ("database.existingSecrett=x", "existingSecrett"),
])
def test_a_misspelt_key_fails_naming_it(setting: str, key: str) -> None:
    error = render_error(*DB, *POOL, "--set", setting)
    assert "schema" in error and f"'{key}'" in error, error


def test_a_value_of_the_wrong_type_fails_naming_the_key() -> None:
    error = render_error(*DB, *POOL, "--set", "pools[0].maxReplicas=many")
    assert "maxReplicas" in error, error


def test_neither_database_option_fails_saying_what_to_set() -> None:
    error = render_error()
    assert "database.existingSecret" in error and "postgresql.enabled=true" in error, error


def test_both_database_options_fail() -> None:
    error = render_error(*DB, *BUNDLED)
    assert "not both" in error, error


def test_min_above_max_fails_naming_the_pool() -> None:
    error = render_error(*DB, *POOL, "--set", "pools[0].minReplicas=5", "--set", "pools[0].maxReplicas=2")
    assert "pools[0] (default): minReplicas=5 is above maxReplicas=2" in error, error


def test_a_grace_period_too_short_for_the_shutdown_timeout_fails() -> None:
    error = render_error(*DB, *POOL, "--set", "pools[0].terminationGracePeriodSeconds=5")
    assert "terminationGracePeriodSeconds" in error, error


def test_duplicate_pool_names_fail() -> None:
    error = render_error(*DB, *POOL, "--set", "pools[1].name=default")
    assert "must be unique" in error, error


@pytest.mark.parametrize("setting", ["operator.peering.enabled=true", "crds.kopfPeering=true"])
def test_the_removed_peering_values_are_refused(setting: str) -> None:
    """kopf peering is gone: its old values fail loudly rather than being ignored."""
    error = render_error(*DB, "--set", setting)
    assert "schema" in error and "additional properties" in error.lower(), error


# -- CRDs ------------------------------------------------------------------------------------


CRD_FILES = {"task.yaml": "tasks.kubetask.io", "queue.yaml": "queues.kubetask.io",
             "taskschedule.yaml": "taskschedules.kubetask.io"}
CRD_NAMES = ["tasks.kubetask.io", "queues.kubetask.io", "taskschedules.kubetask.io"]


def test_the_charts_crd_copies_equal_the_generated_crds() -> None:
    assert sorted(path.name for path in (CHART / "files" / "crds").iterdir()) == sorted(CRD_FILES)
    for name in CRD_FILES:
        copy = (CHART / "files" / "crds" / name).read_bytes()
        assert copy == (ROOT / "crds" / name).read_bytes(), (
            f"charts/kubetask/files/crds/{name} differs from crds/{name}: run `make crds`")


@pytest.mark.parametrize(("file", "name"), sorted(CRD_FILES.items()))
def test_the_rendered_crds_are_the_generated_ones_plus_labels_and_keep(file: str, name: str) -> None:
    (rendered,) = [crd for crd in of_kind(render(*DB), "CustomResourceDefinition") if crd["metadata"]["name"] == name]
    generated = yaml.safe_load((ROOT / "crds" / file).read_text())
    assert rendered["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert rendered["metadata"].pop("labels")["app.kubernetes.io/part-of"] == "kubetask"
    assert rendered == generated


def test_the_kubetask_crds_are_the_only_crds_and_can_be_left_out_or_not_kept() -> None:
    names = [crd["metadata"]["name"] for crd in of_kind(render(*DB), "CustomResourceDefinition")]
    assert names == CRD_NAMES
    unkept = of_kind(render(*DB, "--set", "crds.keep=false"), "CustomResourceDefinition")
    assert unkept and all("annotations" not in crd["metadata"] for crd in unkept)
    assert of_kind(render(*DB, "--set", "crds.install=false"), "CustomResourceDefinition") == []


# -- pods --------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [DB, BUNDLED], ids=["existing-secret", "bundled-postgresql"])
def test_every_container_runs_locked_down(values: tuple[str, ...]) -> None:
    specs = pod_specs(render(*values, *POOL, "--set", "pools[1].name=second"))
    assert len(specs) == (4 if values == BUNDLED else 3)
    for workload, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, workload
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, workload
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, workload
            assert context["runAsUser"] == 65532, workload
            assert context["readOnlyRootFilesystem"] is True, workload
            assert context["allowPrivilegeEscalation"] is False, workload
            assert context["capabilities"] == {"drop": ["ALL"]}, workload
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, workload
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") in tmp_volumes, f"{workload}: /tmp is not an emptyDir"


def test_worker_pods_have_no_kubernetes_credentials() -> None:
    workers = _workers(render(*DB, *POOL, "--set", "pools[1].name=second"))
    assert len(workers) == 2
    for worker in workers:
        spec = worker["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert "serviceAccountName" not in spec and "serviceAccount" not in spec


def test_worker_pool_labels_annotations_and_environment() -> None:
    objects = render(*DB, *POOL, "--set", "pools[0].queue=mail", "--set", "pools[0].minReplicas=1",
                     "--set", "pools[0].maxReplicas=7", "--set", "pools[0].concurrency=2",
                     "--set", "pools[0].scaleDownDelaySeconds=45", "--set", "pools[0].terminationGracePeriodSeconds=60",
                     "--set", "pools[0].handlers={myapp.tasks,myapp.more}", "--set", "pools[0].maxMemoryMb=800",
                     release="prod")
    (worker,) = _workers(objects)
    labels = {"app.kubernetes.io/part-of": "kubetask", "app.kubernetes.io/component": "worker",
              "app.kubernetes.io/instance": "prod", "kubetask.io/pool": "default"}
    assert worker["metadata"]["name"] == "prod-kubetask-worker-default"
    assert labels.items() <= worker["metadata"]["labels"].items()
    assert labels.items() <= worker["spec"]["template"]["metadata"]["labels"].items()
    assert worker["spec"]["selector"]["matchLabels"] == labels
    assert worker["metadata"]["annotations"] == {
        "kubetask.io/queue": "mail", "kubetask.io/min-replicas": "1", "kubetask.io/max-replicas": "7",
        "kubetask.io/concurrency": "2", "kubetask.io/scale-down-delay-seconds": "45"}
    assert worker["spec"]["replicas"] == 1, "a new pool starts at its minimum"
    spec = worker["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 60
    (container,) = spec["containers"]
    assert container["command"] == ["kubetask", "worker"]
    env = _env(container)
    assert env["DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "kubetask-db", "key": "url"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["KUBETASK_QUEUE"]["value"] == "mail"
    assert env["KUBETASK_CONCURRENCY"]["value"] == "2"
    assert env["KUBETASK_HANDLERS"]["value"] == "myapp.tasks,myapp.more"
    assert env["KUBETASK_SHUTDOWN_TIMEOUT_SECONDS"]["value"] == "55"
    assert env["KUBETASK_MAX_MEMORY_MB"]["value"] == "800"


def test_the_default_pool_loads_the_demo_handlers_a_pool_of_your_own_does_not() -> None:
    """The default pool is for trying kubetask out; a pool of your own has only your handlers."""
    (default,) = _workers(render(*DB))
    assert _env(default["spec"]["template"]["spec"]["containers"][0])["KUBETASK_HANDLERS"]["value"] == "kubetask.demo"
    (own,) = _workers(render(*DB, *POOL))
    assert "KUBETASK_HANDLERS" not in _env(own["spec"]["template"]["spec"]["containers"][0])


def test_a_pools_secrets_are_mounted_read_only_where_ctx_secret_reads_them() -> None:
    from kubetask import settings

    objects = render(*DB, *POOL, "--set", "pools[0].secrets={smtp-credentials,image-store}",
                     "--set", "pools[1].name=plain")
    by_pool = {w["metadata"]["labels"]["kubetask.io/pool"]: w["spec"]["template"]["spec"] for w in _workers(objects)}
    spec = by_pool["default"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    for secret in ("smtp-credentials", "image-store"):
        mount = mounts[str(settings.DEFAULT_SECRETS_DIR / secret)]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["secret"] == {"secretName": secret}
    assert [m["mountPath"] for m in by_pool["plain"]["containers"][0]["volumeMounts"]] == ["/tmp"]
    assert "/pools/0/secrets/0': 'Not_A_Name' does not match" in render_error(*DB, *POOL, "--set", "pools[0].secrets={Not_A_Name}")


def test_a_pool_can_use_its_own_image() -> None:
    objects = render(*DB, *POOL, "--set", "pools[0].image.repository=registry.example.com/myapp",
                     "--set", "pools[0].image.tag=1.2.3", "--set", "pools[1].name=plain")
    images = {w["metadata"]["labels"]["kubetask.io/pool"]: w["spec"]["template"]["spec"]["containers"][0]["image"]
              for w in _workers(objects)}
    assert images == {"default": "registry.example.com/myapp:1.2.3", "plain": "kubetask:0.1.0"}


#: Environment the operator no longer reads: it always runs kopf standalone and elects its leader itself.
_PEERING_ENV = {"KUBETASK_STANDALONE", "KUBETASK_PEERING_NAME", "KUBETASK_PRIORITY", "POD_ID"}


def test_operator_environment() -> None:
    operator = _operator(render(*DB))
    assert operator["spec"]["replicas"] == 1
    labels = operator["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "kubetask" and labels["app.kubernetes.io/component"] == "operator"
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["kubetask", "operator"]
    env = _env(container)
    assert not _PEERING_ENV & set(env), sorted(_PEERING_ENV & set(env))
    assert "KUBETASK_NAMESPACES" not in env
    assert env["KUBETASK_LIVENESS_ENDPOINT"]["value"] == "http://0.0.0.0:8080/healthz"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    # Leader election makes overlapping pods safe: the new pod stands by until the old one is gone.
    assert operator["spec"]["strategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


@pytest.mark.parametrize("namespaces", [(), ("--set", "operator.namespaces={team-a,team-b}")],
                         ids=["cluster-wide", "namespaced"])
def test_two_operators_render_with_no_peering_objects_or_rbac(namespaces: tuple[str, ...]) -> None:
    """A hot standby is just `operator.replicas=2`: the replicas elect a leader in PostgreSQL."""
    objects = render(*DB, "--set", "operator.replicas=2", *namespaces, namespace="kt")
    operator = _operator(objects)
    assert operator["spec"]["replicas"] == 2
    env = _env(operator["spec"]["template"]["spec"]["containers"][0])
    assert not _PEERING_ENV & set(env), sorted(_PEERING_ENV & set(env))
    if namespaces:
        assert env["KUBETASK_NAMESPACES"]["value"] == "team-a,team-b,kt", "the release namespace (the pools') is added"
    assert not [obj for obj in objects if obj["apiVersion"].startswith("kopf.dev/")]
    assert not [obj for obj in objects if "peering" in json.dumps(obj).lower()]
    crds = [crd["metadata"]["name"] for crd in of_kind(objects, "CustomResourceDefinition")]
    assert crds == CRD_NAMES
    for role in of_kind(objects, "ClusterRole") + of_kind(objects, "Role"):
        groups = {group for rule in role["rules"] for group in rule["apiGroups"]}
        assert "kopf.dev" not in groups, role["metadata"]["name"]
    assert _kinds(objects) == _kinds(render(*DB, *namespaces, namespace="kt")), "no objects beyond a single operator's"


# -- RBAC --------------------------------------------------------------------------------------


def _kinds(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((obj["kind"], obj["metadata"]["name"]) for obj in objects)


def _rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    return {(group, resource): set(rule["verbs"])
            for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}


#: What the operator may do with Tasks and TaskSchedules, wherever it serves them: no patch of a Task or a
#: TaskSchedule itself, only their status; Tasks are created (by schedules) and deleted, schedules only read.
HANDLER_TASK_RULES = {
    ("kubetask.io", "tasks"): {"get", "list", "watch", "delete", "create"},
    ("kubetask.io", "tasks/status"): {"patch"},
    ("kubetask.io", "taskschedules"): {"get", "list", "watch"},
    ("kubetask.io", "taskschedules/status"): {"patch"},
    ("", "events"): {"create"},
}
#: Container Tasks (operator.containerTasks, the default) add their pods, never patched or exec'd, and their logs.
TASK_RULES = {
    **HANDLER_TASK_RULES,
    ("", "pods"): {"create", "delete", "list", "watch"},
    ("", "pods/log"): {"get"},
}
#: What it may do with worker pools, in the pool namespaces only: scale (not edit) Deployments, annotate pods.
POOL_RULES = {
    ("apps", "deployments"): {"list", "watch"},
    ("apps", "deployments/scale"): {"patch"},
    ("", "pods"): {"list", "patch"},
    ("", "events"): {"create"},
}
CRDS = ("apiextensions.k8s.io", "customresourcedefinitions")
#: Queues are cluster-scoped, read only but for their status (mirrored from PostgreSQL); namespaces are read for
#: their labels (a Queue's namespaceSelector).
QUEUE_RULES = {
    ("kubetask.io", "queues"): {"get", "list", "watch"},
    ("kubetask.io", "queues/status"): {"patch"},
    ("", "namespaces"): {"get", "list", "watch"},
}


def _roles(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[tuple[str, str], set[str]]]:
    """Rules of every Role, by (namespace, name)."""
    return {(role["metadata"]["namespace"], role["metadata"]["name"]): _rules(role) for role in of_kind(objects, "Role")}


def _bound(objects: list[dict[str, Any]]) -> None:
    """Every Role and ClusterRole is bound to the operator's ServiceAccount, and to nothing else."""
    roles = {(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"])
             for r in of_kind(objects, "Role") + of_kind(objects, "ClusterRole")}
    bindings = {("Role" if b["kind"] == "RoleBinding" else "ClusterRole", b["metadata"].get("namespace"),
                 b["roleRef"]["name"]) for b in of_kind(objects, "RoleBinding") + of_kind(objects, "ClusterRoleBinding")}
    assert roles == bindings
    for binding in of_kind(objects, "RoleBinding") + of_kind(objects, "ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubetask-operator",
                                        "namespace": "kt"}], binding["metadata"]["name"]


def test_cluster_wide_operator_rbac_is_least_privilege() -> None:
    """Cluster-wide: only what Tasks need; scaling Deployments and patching pods only in the release namespace."""
    objects = render(*DB, namespace="kt")
    (role,) = of_kind(objects, "ClusterRole")
    assert _rules(role) == {**TASK_RULES, **QUEUE_RULES, CRDS: {"get", "list", "watch"}}
    assert _roles(objects) == {("kt", "kubetask-operator-pools"): POOL_RULES}
    _bound(objects)
    env = _env(_operator(objects)["spec"]["template"]["spec"]["containers"][0])
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["KUBETASK_POOL_NAMESPACES"]["value"] == "$(POD_NAMESPACE)", "pools discovered only where it may scale"


def test_without_container_tasks_the_operator_gets_no_rights_on_pods_but_its_pools() -> None:
    objects = render(*DB, "--set", "operator.containerTasks=false", namespace="kt")
    (role,) = of_kind(objects, "ClusterRole")
    assert _rules(role) == {**HANDLER_TASK_RULES, **QUEUE_RULES, CRDS: {"get", "list", "watch"}}
    env = _env(_operator(objects)["spec"]["template"]["spec"]["containers"][0])
    assert env["KUBETASK_CONTAINER_TASKS"]["value"] == "false"


def test_namespaced_operator_gets_a_role_per_namespace() -> None:
    objects = render(*DB, "--set", "operator.namespaces={team-a}", namespace="kt")
    assert _roles(objects) == {("kt", "kubetask-operator"): TASK_RULES, ("team-a", "kubetask-operator"): TASK_RULES,
                               ("kt", "kubetask-operator-pools"): POOL_RULES}
    (cluster_role,) = of_kind(objects, "ClusterRole")
    assert _rules(cluster_role) == {CRDS: {"get", "list", "watch"}, **QUEUE_RULES}
    assert all(verbs <= {"get", "list", "watch"} for resource, verbs in _rules(cluster_role).items()
               if resource != ("kubetask.io", "queues/status")), "cluster-wide: reads, and Queue statuses"
    _bound(objects)


def test_pool_namespaces_get_a_pool_role_each_and_are_the_operators_pool_scope() -> None:
    objects = render(*DB, "--set", "operator.poolNamespaces={batch,kt}", namespace="kt")
    assert _roles(objects) == {("kt", "kubetask-operator-pools"): POOL_RULES,
                               ("batch", "kubetask-operator-pools"): POOL_RULES}
    _bound(objects)
    env = _env(_operator(objects)["spec"]["template"]["spec"]["containers"][0])
    assert env["KUBETASK_POOL_NAMESPACES"]["value"] == "$(POD_NAMESPACE),batch"
    assert "poolNamespaces/0': 'Batch!' does not match" in render_error(*DB, "--set", "operator.poolNamespaces={Batch!}")


@pytest.mark.parametrize("values", [DB, ("--set", "operator.namespaces={a}", *DB), BUNDLED])
def test_no_role_grants_anything_on_secrets(values: tuple[str, ...]) -> None:
    for role in of_kind(render(*values), "ClusterRole") + of_kind(render(*values), "Role"):
        for rule in role["rules"]:
            assert "secrets" not in rule["resources"] and "*" not in rule["resources"], role["metadata"]["name"]
            assert "*" not in rule["verbs"], role["metadata"]["name"]


# -- the database URL --------------------------------------------------------------------------


@pytest.mark.parametrize("values", [DB, BUNDLED], ids=["existing-secret", "bundled-postgresql"])
def test_the_database_url_is_only_ever_read_from_a_secret(values: tuple[str, ...]) -> None:
    objects = render(*values)
    # The one ConfigMap is the bundled PostgreSQL's init script, which reads its passwords from the Secret's env.
    for config_map in of_kind(objects, "ConfigMap"):
        assert config_map["metadata"]["name"] == "kubetask-postgresql-init"
        assert not re.search(r"PASSWORD '[^:]", json.dumps(config_map)), "a password literal in a ConfigMap"
    for workload, spec in pod_specs(objects).items():
        for container in spec["containers"]:
            for item in container.get("env", []):
                assert not re.search(r"postgres(ql)?://", item.get("value", "")), (workload, item["name"])
                if item["name"] == "DATABASE_URL":
                    assert "secretKeyRef" in item["valueFrom"], workload
    for obj in objects:
        if obj["kind"] != "Secret":
            assert "postgresql://" not in json.dumps(obj), f"{obj['kind']}/{obj['metadata']['name']}"


def test_bundled_postgresql() -> None:
    objects = render(*BUNDLED)
    (secret,) = of_kind(objects, "Secret")
    assert secret["metadata"]["name"] == "kubetask-postgresql"
    assert set(secret["data"]) == {"password", "url", "worker-password", "worker-url", "reader-password",
                                   "reader-url"}
    (statefulset,) = of_kind(objects, "StatefulSet")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "database", "the dev harness must not run it as a process"
    (service,) = [obj for obj in of_kind(objects, "Service") if obj["metadata"]["name"] == "kubetask-postgresql"]
    assert service["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    specs = pod_specs(objects)
    keys = {workload: _env(spec["containers"][0])["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            for workload, spec in specs.items() if "DATABASE_URL" in _env(spec["containers"][0])}
    # The operator owns the database; the workers, which run tenant code, get the worker role's URL.
    assert keys == {"Deployment/kubetask-operator": {"name": "kubetask-postgresql", "key": "url"},
                    "Deployment/kubetask-worker-default": {"name": "kubetask-postgresql", "key": "worker-url"}}


def test_the_bundled_postgresql_superuser_only_initialises_and_each_process_has_its_role() -> None:
    objects = render(*BUNDLED, "--set", "postgresql.auth.password=s3cret")
    data = _secret_data(objects)
    assert data["url"].startswith("postgresql://kubetask:s3cret@")
    assert data["worker-url"].startswith(f"postgresql://kubetask_worker:{data['worker-password']}@")
    assert data["reader-url"].startswith(f"postgresql://kubetask_reader:{data['reader-password']}@")
    assert len({data["password"], data["worker-password"], data["reader-password"]}) == 3
    spec = pod_specs(objects)["StatefulSet/kubetask-postgresql"]
    (server,) = spec["containers"]
    env = _env(server)
    assert env["POSTGRES_USER"]["value"] == "postgres" and env["KUBETASK_OWNER"]["value"] == "kubetask"
    assert env["KUBETASK_WORKER_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "worker-password"
    assert {"name": "init", "mountPath": "/docker-entrypoint-initdb.d", "readOnly": True} in server["volumeMounts"]
    (init,) = [obj for obj in of_kind(objects, "ConfigMap") if obj["metadata"]["name"] == "kubetask-postgresql-init"]
    script = init["data"]["kubetask-roles.sh"]
    for statement in ('CREATE ROLE :"owner" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', 'ALTER DATABASE :"db" OWNER TO :"owner"',
                      "CREATE ROLE kubetask_worker LOGIN", "CREATE ROLE kubetask_reader LOGIN",
                      "ALTER ROLE CURRENT_USER PASSWORD NULL"):
        assert statement in script, statement


@pytest.mark.parametrize("username", ["postgres", "kubetask_worker", "kubetask_reader"])
def test_the_bundled_owner_cannot_take_another_roles_name(username: str) -> None:
    error = render_error(*BUNDLED, "--set", f"postgresql.username={username}")
    assert "username" in error, error


def test_workers_get_their_own_url_from_database_worker_secret() -> None:
    specs = pod_specs(render(*DB, "--set", "database.workerSecret=kubetask-db-worker"))
    env = _env(specs["Deployment/kubetask-worker-default"]["containers"][0])
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "kubetask-db-worker", "key": "url"}
    operator = _env(specs["Deployment/kubetask-operator"]["containers"][0])
    assert operator["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] != "kubetask-db-worker"
    notes = helm("install", "kubetask", str(CHART), *DB, "--dry-run=client").stdout
    assert "The workers use the operator's database URL" in notes and "IN ROLE kubetask_worker" in notes
    quiet = helm("install", "kubetask", str(CHART), *DB, "--set", "database.workerSecret=w", "--dry-run=client").stdout
    assert "The workers use the operator's database URL" not in quiet


def test_notes_tell_the_next_step() -> None:
    result = helm("install", "kubetask", str(CHART), *DB, "--dry-run=client", "--namespace", "kt")
    assert "examples/task.yaml" in result.stdout
    assert "kubectl get tasks -n kt -w" in result.stdout
    assert "no pool loads the demo handlers" not in result.stdout, "the default pool loads them"
    own = helm("install", "kubetask", str(CHART), *DB, *POOL, "--dry-run=client", "--namespace", "kt").stdout
    assert "no pool loads the demo handlers" in own and "pools[].handlers: [kubetask.demo]" in own


def test_the_chart_no_longer_mentions_kopf_peering() -> None:
    """Peering is gone from the operator; the chart's docs, templates and values must not promise it."""
    for path in sorted(CHART.rglob("*")):
        if path.is_file():
            text = path.read_text().lower()
            for word in ("peering", "kopf.dev", "kubetask_standalone", "kubetask_priority"):
                assert word not in text, f"{path.relative_to(CHART)} mentions {word!r}"


def test_history_retention_is_off_unless_set_and_rendered_for_the_operator() -> None:
    objects = render(*DB)
    env = _env(_operator(objects)["spec"]["template"]["spec"]["containers"][0])
    assert not {"KUBETASK_HISTORY_RETENTION_DAYS", "KUBETASK_HISTORY_KEEP_LAST"} & set(env), "keep history for ever"
    objects = render(*DB, "--set", "operator.history.retentionDays=30", "--set", "operator.history.keepLast=1000000")
    env = _env(_operator(objects)["spec"]["template"]["spec"]["containers"][0])
    assert env["KUBETASK_HISTORY_RETENTION_DAYS"]["value"] == "30"
    assert env["KUBETASK_HISTORY_KEEP_LAST"]["value"] == "1000000", "not 1e+06"
    env = _env(_operator(render(*DB, "--set-json", "operator.history.retentionDays=0.5"))["spec"]["template"]["spec"]
               ["containers"][0])
    assert env["KUBETASK_HISTORY_RETENTION_DAYS"]["value"] == "0.5"
    for (container,) in (w["spec"]["template"]["spec"]["containers"] for w in _workers(objects)):
        assert not any(name.startswith("KUBETASK_HISTORY") for name in _env(container)), "the operator's job"


def test_the_operators_owner_name_default_ttl_and_admission_queue_are_values_with_the_products_defaults() -> None:
    env = _env(_operator(render(*DB))["spec"]["template"]["spec"]["containers"][0])
    defaults = settings.OperatorSettings.model_fields
    assert env["KUBETASK_MANAGED_BY"]["value"] == defaults["managed_by"].default == model.DEFAULT_MANAGED_BY
    assert env["KUBETASK_DEFAULT_TTL_SECONDS_AFTER_FINISHED"]["value"] == str(
        defaults["default_ttl_seconds_after_finished"].default)
    assert env["KUBETASK_ADMISSION_QUEUE_SIZE"]["value"] == str(defaults["admission_queue_size"].default)
    env = _env(_operator(render(*DB, "--set", "operator.managedBy=team-a.example.com/kubetask",
                                "--set", "operator.defaultTtlSecondsAfterFinished=0",
                                "--set", "operator.admissionQueueSize=2000"))["spec"]["template"]["spec"]["containers"][0])
    assert (env["KUBETASK_MANAGED_BY"]["value"], env["KUBETASK_DEFAULT_TTL_SECONDS_AFTER_FINISHED"]["value"],
            env["KUBETASK_ADMISSION_QUEUE_SIZE"]["value"]) == ("team-a.example.com/kubetask", "0", "2000")


def test_require_queue_is_off_by_default_and_reaches_the_operator() -> None:
    env = _env(_operator(render(*DB))["spec"]["template"]["spec"]["containers"][0])
    assert env["KUBETASK_REQUIRE_QUEUE"]["value"] == "false"
    assert settings.OperatorSettings.model_fields["require_queue"].default is False
    env = _env(_operator(render(*DB, *QUEUE_API, "--set", "operator.requireQueue=true"))["spec"]["template"]["spec"]
               ["containers"][0])
    assert env["KUBETASK_REQUIRE_QUEUE"]["value"] == "true"
    parsed = settings.OperatorSettings.from_env({"DATABASE_URL": "postgresql://x@y/z",
                                                 "KUBETASK_REQUIRE_QUEUE": env["KUBETASK_REQUIRE_QUEUE"]["value"]})
    assert parsed.require_queue is True
    for (container,) in (w["spec"]["template"]["spec"]["containers"] for w in _workers(render(*DB))):
        assert "KUBETASK_REQUIRE_QUEUE" not in _env(container), "the operator's decision"
    error = render_error(*DB, "--set", "operator.requireQueue=maybe")
    assert "requireQueue" in error, error


def test_the_values_schema_checks_managed_by_with_the_crds_own_pattern() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["operator"]["properties"]["managedBy"]["pattern"] == model.MANAGED_BY_PATTERN, \
        "copy kubetask.model.MANAGED_BY_PATTERN into charts/kubetask/values.schema.json"


@pytest.mark.parametrize(("setting", "key"), [
    ("operator.managedBy=no-slash", "managedBy"),
    ("operator.managedBy=Upper.Example/x", "managedBy"),
    ("operator.defaultTtlSecondsAfterFinished=-1", "defaultTtlSecondsAfterFinished"),
    ("operator.admissionQueueSize=0", "admissionQueueSize"),
])
def test_bad_owner_ttl_or_queue_values_fail_naming_the_key(setting: str, key: str) -> None:
    error = render_error(*DB, "--set", setting)
    assert key in error, error


@pytest.mark.parametrize(("setting", "key"), [
    ("operator.history.retentionDays=0", "retentionDays"),
    ("operator.history.keepLast=0", "keepLast"),
    ("operator.history.keepLast=1.5", "keepLast"),
    ("operator.history.keepLatest=5", "keepLatest"),
    ("logs.format=xml", "format"),
])
def test_bad_retention_or_log_values_fail_naming_the_key(setting: str, key: str) -> None:
    error = render_error(*DB, "--set", setting)
    assert key in error, error


def test_operator_and_workers_log_json_by_default_and_as_the_values_say() -> None:
    for values, expected in [((), ("json", "info")), (("--set", "logs.format=text", "--set", "logs.level=debug"),
                                                        ("text", "debug"))]:
        objects = render(*DB, *values)
        containers = [_operator(objects)["spec"]["template"]["spec"]["containers"][0]]
        containers += [w["spec"]["template"]["spec"]["containers"][0] for w in _workers(objects)]
        assert len(containers) == 2
        for container in containers:
            env = _env(container)
            assert (env["KUBETASK_LOG_FORMAT"]["value"], env["KUBETASK_LOG_LEVEL"]["value"]) == expected


# -- metrics ------------------------------------------------------------------------------


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container.get("ports", [])}


def test_every_pod_serves_metrics_on_a_port_named_metrics_and_the_operator_has_a_service() -> None:
    objects = render(*DB, "--set", "metrics.port=9464")
    (operator,) = _operator(objects)["spec"]["template"]["spec"]["containers"]
    assert _env(operator)["KUBETASK_METRICS_PORT"]["value"] == "9464"
    assert _ports(operator) == {"healthz": 8080, "metrics": 9464}
    for (worker,) in (w["spec"]["template"]["spec"]["containers"] for w in _workers(objects)):
        assert _env(worker)["KUBETASK_METRICS_PORT"]["value"] == "9464"
        assert _ports(worker) == {"health": 8081, "metrics": 9464}
    (service,) = of_kind(objects, "Service")
    assert service["metadata"]["name"] == "kubetask-operator-metrics"
    assert service["spec"]["selector"] == _operator(objects)["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"}]
    assert not of_kind(objects, "ServiceMonitor") and not of_kind(objects, "PodMonitor"), "off unless asked for"


def test_metrics_can_be_turned_off() -> None:
    objects = render(*DB, "--set", "metrics.enabled=false", "--set", "operator.livenessProbe.enabled=false",
                     "--set", "poolDefaults.livenessProbe.enabled=false")
    assert not of_kind(objects, "Service")
    for spec in pod_specs(objects).values():
        (container,) = spec["containers"]
        assert "KUBETASK_METRICS_PORT" not in _env(container) and "ports" not in container


def test_service_monitor_and_pod_monitor_scrape_the_metrics_ports() -> None:
    objects = render(*DB, "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.interval=15s",
                     "--set", "metrics.serviceMonitor.labels.release=kube-prometheus-stack")
    (monitor,) = of_kind(objects, "ServiceMonitor")
    (pods,) = of_kind(objects, "PodMonitor")
    (service,) = of_kind(objects, "Service")
    for obj in (monitor, pods):
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert obj["metadata"]["namespace"] == "kubetask-system"
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert obj["spec"]["namespaceSelector"] == {"matchNames": ["kubetask-system"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert pods["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    for worker in _workers(objects):
        assert pods["spec"]["selector"]["matchLabels"].items() <= worker["spec"]["template"]["metadata"]["labels"].items()
    assert not (pods["spec"]["selector"]["matchLabels"].items()
                <= _operator(objects)["spec"]["template"]["metadata"]["labels"].items()), "workers only"


@pytest.mark.parametrize(("values", "message"), [
    (("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.enabled=false"),
     "metrics.serviceMonitor.enabled=true needs metrics.enabled=true"),
    (("--set", "metrics.port=8080"), "metrics.port=8080 is also operator.livenessProbe.port"),
    (("--set", "metrics.port=8081"), "metrics.port=8081 is also poolDefaults.livenessProbe.port"),
    (("--set", "metrics.serviceMonitor.interval=often"), "interval"),
    (("--set", "metrics.serviceMonitors.enabled=true"), "serviceMonitors"),
])
def test_bad_metrics_values_fail_saying_why(values: tuple[str, ...], message: str) -> None:
    error = render_error(*DB, *values)
    assert message in error, error



# -- posture: resources, /tmp, NetworkPolicy, disruption budget -------------------------------


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Does a label selector (matchLabels, matchExpressions with In) select ``labels``?"""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    return all(expr["operator"] == "In" and labels.get(expr["key"]) in expr["values"]
               for expr in selector.get("matchExpressions", []))


@pytest.mark.parametrize("values", [DB, BUNDLED], ids=["existing-secret", "bundled-postgresql"])
def test_no_container_is_best_effort_and_every_emptydir_has_a_size_limit(values: tuple[str, ...]) -> None:
    specs = pod_specs(render(*values, *POOL, "--set", "pools[1].name=second"))
    for workload, spec in specs.items():
        for container in spec["containers"]:
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), workload
            assert "memory" in resources.get("limits", {}), workload
        for volume in spec["volumes"]:
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{workload}: {volume['name']}"


def test_pools_take_the_pool_defaults_unless_they_set_their_own() -> None:
    objects = render(*DB, *POOL, "--set", "pools[1].name=own", "--set", "pools[1].resources.requests.cpu=2",
                     "--set", "pools[1].resources.requests.memory=4Gi", "--set", "pools[1].tmpSizeLimit=10Gi",
                     "--set", "poolDefaults.tmpSizeLimit=1Gi", "--set", "operator.tmpSizeLimit=16Mi")
    by_pool = {w["metadata"]["labels"]["kubetask.io/pool"]: w["spec"]["template"]["spec"] for w in _workers(objects)}
    assert by_pool["default"]["containers"][0]["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                                                "limits": {"memory": "512Mi"}}
    assert by_pool["own"]["containers"][0]["resources"] == {"requests": {"cpu": 2, "memory": "4Gi"}}
    assert by_pool["default"]["volumes"][0]["emptyDir"] == {"sizeLimit": "1Gi"}
    assert by_pool["own"]["volumes"][0]["emptyDir"] == {"sizeLimit": "10Gi"}
    assert _operator(objects)["spec"]["template"]["spec"]["volumes"][0]["emptyDir"] == {"sizeLimit": "16Mi"}
    error = render_error(*DB, *POOL, "--set", "pools[0].tmpSizeLimit=big")
    assert "/pools/0/tmpSizeLimit': 'big' does not match" in error, error


def test_network_policies_admit_only_the_metrics_port_and_the_releases_own_database_clients() -> None:
    objects = render(*BUNDLED, "--set", "metrics.port=9464")
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(objects, "NetworkPolicy")}
    assert sorted(policies) == ["kubetask-operator", "kubetask-postgresql", "kubetask-worker"]
    pods = {w: o["spec"]["template"]["metadata"]["labels"] for w, o in
            ((o["metadata"]["labels"]["app.kubernetes.io/component"], o)
             for o in of_kind(objects, "Deployment") + of_kind(objects, "StatefulSet"))}
    for component in ("operator", "worker"):
        policy = policies[f"kubetask-{component}"]
        assert policy["policyTypes"] == ["Ingress"], "egress stays open: API server and PostgreSQL addresses vary"
        assert [c for c, labels in pods.items() if _matches(policy["podSelector"], labels)] == [component]
        assert policy["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}], "the metrics port alone"
    database = policies["kubetask-postgresql"]
    assert [c for c, labels in pods.items() if _matches(database["podSelector"], labels)] == ["database"]
    ((rule),) = database["ingress"]
    assert rule["ports"] == [{"port": "postgresql", "protocol": "TCP"}]
    ((peer),) = rule["from"]
    assert sorted(c for c, labels in pods.items() if _matches(peer["podSelector"], labels)) == ["operator", "worker"]
    other_release = {**pods["worker"], "app.kubernetes.io/instance": "other"}
    assert not _matches(peer["podSelector"], other_release), "another release's pods are not let in"


def test_network_policy_options() -> None:
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    objects = render(*BUNDLED, "--set-json", f"networkPolicy.metricsFrom=[{json.dumps(scraper)}]",
                     "--set-json", 'networkPolicy.postgresqlFrom=[{"podSelector": {"matchLabels": {"app": "cli"}}}]')
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(objects, "NetworkPolicy")}
    assert policies["kubetask-worker"]["ingress"][0]["from"] == [scraper]
    assert policies["kubetask-postgresql"]["ingress"][0]["from"][1] == {"podSelector": {"matchLabels": {"app": "cli"}}}
    closed = {p["metadata"]["name"]: p["spec"] for p in of_kind(render(*DB, "--set", "metrics.enabled=false"),
                                                                 "NetworkPolicy")}
    assert closed["kubetask-operator"]["ingress"] == [] and closed["kubetask-worker"]["ingress"] == []
    assert of_kind(render(*DB, "--set", "networkPolicy.enabled=false"), "NetworkPolicy") == []


def test_metrics_listen_on_every_address_of_the_pod_as_the_value_says() -> None:
    for values, address in [((), "0.0.0.0"), (("--set", "metrics.address=127.0.0.1"), "127.0.0.1")]:
        objects = render(*DB, *values)
        containers = [spec["containers"][0] for spec in pod_specs(objects).values()]
        assert len(containers) == 2
        assert all(_env(c)["KUBETASK_METRICS_ADDRESS"]["value"] == address for c in containers)
    assert "/metrics/address" in render_error(*DB, "--set", "metrics.address=everywhere")


def test_the_operator_has_a_disruption_budget_that_never_blocks_a_drain() -> None:
    objects = render(*DB)
    (budget,) = of_kind(objects, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == _operator(objects)["spec"]["selector"]["matchLabels"]
    assert of_kind(render(*DB, "--set", "operator.podDisruptionBudget.enabled=false"), "PodDisruptionBudget") == []
    error = render_error(*DB, "--set", "operator.podDisruptionBudget.maxUnavailable=0")
    assert "/operator/podDisruptionBudget/maxUnavailable" in error, error


# -- the bundled PostgreSQL: its password, TLS -----------------------------------------------------


def _secret_data(objects: list[dict[str, Any]]) -> dict[str, str]:
    import base64

    (secret,) = of_kind(objects, "Secret")
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def test_a_given_password_renders_the_same_secret_every_time() -> None:
    """`helm template` (GitOps) renders the same password on every run once one is given."""
    values = (*BUNDLED, "--set", "postgresql.auth.password=s3cret")
    first, second = _secret_data(render(*values)), _secret_data(render(*values))
    assert first == second
    assert first["password"] == "s3cret"
    assert first["url"] == "postgresql://kubetask:s3cret@kubetask-postgresql.kubetask-system.svc:5432/kubetask"
    # Without one, every `helm template` is an install with a new password: why the NOTES say to set one.
    assert _secret_data(render(*BUNDLED))["password"] != _secret_data(render(*BUNDLED))["password"]
    notes = helm("install", "kubetask", str(CHART), *BUNDLED, "--dry-run=client").stdout
    assert "set postgresql.auth.password or postgresql.auth.existingSecret" in notes
    assert "postgresql.auth" not in helm("install", "kubetask", str(CHART), *values, "--dry-run=client").stdout


def test_an_existing_auth_secret_is_used_by_the_server_and_by_kubetask() -> None:
    objects = render(*BUNDLED, "--set", "postgresql.auth.existingSecret=pg-auth")
    assert of_kind(objects, "Secret") == [], "the chart makes no Secret of its own"
    specs = pod_specs(objects)
    server = _env(specs["StatefulSet/kubetask-postgresql"]["containers"][0])
    assert server["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "pg-auth", "key": "password"}
    for workload, key in (("Deployment/kubetask-operator", "url"), ("Deployment/kubetask-worker-default", "worker-url")):
        env = _env(specs[workload]["containers"][0])
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "pg-auth", "key": key}, workload


def test_an_upgrade_that_cannot_read_the_generated_password_fails_instead_of_replacing_it() -> None:
    error = render_error(*BUNDLED, "--is-upgrade")
    assert "cannot read the Secret kubetask-postgresql" in error and "postgresql.auth.password" in error, error
    render(*BUNDLED, "--is-upgrade", "--set", "postgresql.auth.password=s3cret")  # a given password renders


@pytest.mark.parametrize(("values", "message"), [
    (("--set", "postgresql.auth.password=a", "--set", "postgresql.auth.existingSecret=b"), "not both"),
    (("--set", "postgresql.tls.enabled=true"), "postgresql.tls.enabled=true needs postgresql.tls.existingSecret"),
    (("--set", "postgresql.tls.sslmode=prefer"), "sslmode"),
    (("--set", "postgresql.auth.password=a@b"), "/postgresql/auth/password"),
])
def test_bad_postgresql_values_fail_saying_why(values: tuple[str, ...], message: str) -> None:
    error = render_error(*BUNDLED, *values)
    assert message in error, error


def test_tls_makes_the_server_refuse_plain_connections_and_kubetask_ask_for_tls() -> None:
    tls = (*BUNDLED, "--set", "postgresql.auth.password=pw", "--set", "postgresql.tls.enabled=true",
           "--set", "postgresql.tls.existingSecret=pg-tls")
    objects = render(*tls)
    assert _secret_data(objects)["url"].endswith("/kubetask?sslmode=require")
    spec = pod_specs(objects)["StatefulSet/kubetask-postgresql"]
    (server,) = spec["containers"]
    settings = dict(arg.split("=", 1) for arg in server["args"] if arg != "-c")
    assert settings["ssl"] == "on"
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert settings["ssl_cert_file"] == mounts["tls"] + "/tls.crt" and settings["ssl_key_file"] == mounts["tls"] + "/tls.key"
    assert volumes["tls"]["secret"]["secretName"] == "pg-tls"
    assert volumes["tls"]["secret"]["defaultMode"] == 0o640, "PostgreSQL refuses a key file others can read"
    assert settings["hba_file"] == mounts["hba"] + "/pg_hba.conf"
    (hba,) = [obj for obj in of_kind(objects, "ConfigMap") if obj["metadata"]["name"] == "kubetask-postgresql-hba"]
    assert volumes["hba"]["configMap"]["name"] == hba["metadata"]["name"]
    assert [line for line in hba["data"]["pg_hba.conf"].splitlines() if line.startswith("host")] == [
        "hostssl all all all scram-sha-256"], "no line lets a connection without TLS in"
    assert "sslrootcert" not in _secret_data(objects)["url"]

    verified = render(*tls, "--set", "postgresql.tls.sslmode=verify-full")
    url = _secret_data(verified)["url"]
    assert "?sslmode=verify-full&sslrootcert=" in url
    for workload in ("Deployment/kubetask-operator", "Deployment/kubetask-worker-default"):
        spec = pod_specs(verified)[workload]
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert url.endswith(f"sslrootcert={mounts['postgresql-ca']}/ca.crt"), workload
        (volume,) = [v for v in spec["volumes"] if v["name"] == "postgresql-ca"]
        assert volume["secret"] == {"secretName": "pg-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert not [v for spec in pod_specs(objects).values() for v in spec["volumes"] if v["name"] == "postgresql-ca"]


def test_workers_are_probed_on_their_own_liveness_endpoint() -> None:
    """The kubelet restarts a worker whose event loop, claim loop or heartbeat is stuck (worker.health)."""
    for worker in _workers(render(*DB, "--set", "poolDefaults.livenessProbe.stallSeconds=120")):
        (container,) = worker["spec"]["template"]["spec"]["containers"]
        env = _env(container)
        assert env["KUBETASK_HEALTH_PORT"]["value"] == "8081"
        assert env["KUBETASK_HEALTH_ADDRESS"]["value"] == "0.0.0.0"
        assert env["KUBETASK_LIVENESS_STALL_SECONDS"]["value"] == "120"
        assert {"name": "health", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
        probe = container["livenessProbe"]
        assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
        # Restarted after ~30 s of 503s, well past one slow answer.
        assert probe["periodSeconds"] * probe["failureThreshold"] >= 30 and probe["timeoutSeconds"] >= 2
    for worker in _workers(render(*DB, "--set", "poolDefaults.livenessProbe.enabled=false")):
        (container,) = worker["spec"]["template"]["spec"]["containers"]
        assert "livenessProbe" not in container and "KUBETASK_HEALTH_PORT" not in _env(container)


# -- a Queue per pool (pools[].queueSpec) --------------------------------------------------------------------

def _queues(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {q["metadata"]["name"]: q for q in of_kind(objects, "Queue")}


def _pools(*pools: dict[str, Any]) -> tuple[str, str]:
    return ("--set-json", f"pools={json.dumps(list(pools))}")


def test_the_default_pool_gets_an_open_unlimited_queue_once_the_crd_is_served() -> None:
    [queue] = of_kind(render(*DB, *QUEUE_API), "Queue")
    assert queue["apiVersion"] == model.API_VERSION and queue["metadata"]["name"] == "default"
    assert "namespace" not in queue["metadata"], "cluster-scoped"
    assert queue["spec"] == {}, "every namespace, no limit: what a queue without a Queue does"
    assert model.QueueSpec.model_validate(queue["spec"]) == model.QueueSpec()
    assert queue["metadata"]["labels"]["kubetask.io/pool"] == "default"
    # A fresh cluster whose CRDs this release installs: Helm could not create it, so it is left out, and said.
    assert of_kind(render(*DB), "Queue") == []
    notes = helm("install", "kubetask", str(CHART), *DB, "--dry-run=client").stdout
    assert "Queues:     default — not created yet" in notes and "helm upgrade" in notes


def test_a_queue_spec_is_rendered_as_set_named_after_the_pools_queue() -> None:
    spec = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-a"},
                                  "matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold"]}]},
            "maxRunning": 40, "rateLimit": {"tasks": 100, "periodSeconds": 60}, "concurrencyKeyLimit": 2}
    objects = render(*DB, *QUEUE_API, *_pools({"name": "images", "queue": "pictures", "queueSpec": spec},
                                              {"name": "spare", "queue": "pictures"}, {"name": "plain"}))
    queues = _queues(objects)
    assert set(queues) == {"pictures"}, "one Queue per queueSpec; a pool without one gets none"
    assert queues["pictures"]["spec"] == spec, "only the keys set: paused is left to `kubetask queue pause`"
    model.QueueSpec.model_validate(queues["pictures"]["spec"])
    paused = _queues(render(*DB, *QUEUE_API, *_pools({"name": "a", "queueSpec": {"paused": True}})))
    assert paused["a"]["spec"] == {"paused": True}


def test_two_pools_of_one_queue_cannot_both_set_its_spec() -> None:
    error = render_error(*DB, *QUEUE_API, *_pools({"name": "a", "queue": "q", "queueSpec": {}},
                                                  {"name": "b", "queue": "q", "queueSpec": {"paused": True}}))
    assert 'pools[1] (b) sets queueSpec for queue "q", and so does pool a' in error, error


def test_require_queue_needs_the_queue_crd_served_to_render_the_queues() -> None:
    error = render_error(*DB, "--set", "operator.requireQueue=true")
    assert "operator.requireQueue=true" in error and "kubectl apply --server-side -f crds/" in error, error
    render(*DB, *QUEUE_API, "--set", "operator.requireQueue=true")


#: (queueSpec, what the error names: the key, or the bad label key): bad specs are refused by values.schema.json at install, as the CRD would.
BAD_QUEUE_SPECS: list[tuple[dict[str, Any], str]] = [
    ({"maxRunning": 0}, "maxRunning"),
    ({"maxRunning": -3}, "maxRunning"),
    ({"maxRunning": "3"}, "maxRunning"),
    ({"maxRunning": 100_001}, "maxRunning"),
    ({"concurrencyKeyLimit": 0}, "concurrencyKeyLimit"),
    ({"paused": "yes"}, "paused"),
    ({"rateLimit": {"tasks": 0, "periodSeconds": 60}}, "tasks"),
    ({"rateLimit": {"tasks": 10}}, "periodSeconds"),
    ({"rateLimit": {"tasks": 10, "periodSeconds": 86_401}}, "periodSeconds"),
    ({"rateLimit": {"tasks": 10, "periodSeconds": 1, "burst": 5}}, "burst"),
    ({"maxrunning": 3}, "maxrunning"),
    ({"namespaceSelector": {"matchLabels": {"team": "a b"}}}, "matchLabels"),
    ({"namespaceSelector": {"matchLabels": {"-bad-key": "a"}}}, "-bad-key"),
    ({"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In"}]}}, "matchExpressions"),
    ({"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": []}]}},
     "matchExpressions"),
    ({"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists", "values": ["a"]}]}},
     "matchExpressions"),
    ({"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Equals", "values": ["a"]}]}},
     "operator"),
    ({"namespaceSelector": {"matchNames": ["team-a"]}}, "matchNames"),
]


@pytest.mark.parametrize(("spec", "key"), BAD_QUEUE_SPECS, ids=[json.dumps(s) for s, _ in BAD_QUEUE_SPECS])
def test_a_bad_queue_spec_is_refused_by_the_values_schema_naming_the_key(spec: dict[str, Any], key: str) -> None:
    error = render_error(*DB, *QUEUE_API, *_pools({"name": "a", "queueSpec": spec}))
    assert key in error, error
    with pytest.raises(ValueError):  # the model, and the CRD generated from it (strict as its types are), refuse it too
        model.QueueSpec.model_validate_json(json.dumps(spec), strict=True)
