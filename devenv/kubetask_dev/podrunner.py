"""Run a real local process for every kubetask pod of the local cluster.

kwok marks pods Running, but nothing runs in them. This harness plays the
kubelet for the pods labelled ``app.kubernetes.io/part-of=kubetask``: for each
such pod that is Running it starts one process with the container's command,
args and environment (literal values, downward-API fields, Secret and
ConfigMap references, ``envFrom``), and restarts it if it exits on its own.
When the pod gets a deletionTimestamp it sends SIGTERM, waits the pod's
``terminationGracePeriodSeconds``, then SIGKILL, and only then marks the pod
``kubetask.dev/exited`` so kwok removes it: the pod stays Terminating while
its process shuts down, as on a real node.

A pod that mounts a ServiceAccount token gets one through the TokenRequest
API, handed to the process as a kubeconfig (``KUBECONFIG``), so the process
talks to the API server with the pod's own identity and RBAC applies.

Task pods (component ``task``, restartPolicy Never, one container ``task``)
are run as a kubelet runs them, and the harness, not kwok, writes their whole
status (kwok's pod-ready stage leaves them alone): ``Running`` when the
process starts, then ``Succeeded`` or ``Failed`` with the container's
``terminated`` state when it exits, never restarted. The image is not pulled:
command and args are the command line, on the harness's PATH. The kubelet's
failures are played too, with the kubelet's reasons and the runtime's exit
codes: a signal N is exit code 128+N; a command not on PATH is ``StartError``
with exit code 128; ``activeDeadlineSeconds`` past (counted from
``status.startTime``) stops the process (SIGTERM, grace, SIGKILL) and fails
the pod ``DeadlineExceeded``; a Secret or ConfigMap the environment needs and
that is missing leaves the container waiting ``CreateContainerConfigError``
until it appears. A finished pod stays as it is until it is deleted.

The dev harness's unpullable images: an image whose registry host is
``unpullable.invalid`` (``unpullable.invalid/app:1``, ``unpullable.invalid:5000/x``)
cannot be pulled. Its pod stays ``Pending`` with the container waiting
``ErrImagePull``, then ``ImagePullBackOff``, and no process ever starts; that
is how tests exercise image problems without a registry (``.invalid`` is a
reserved name no network resolves).

Output goes to ``<state>/logs/pods/<namespace>_<pod>_<uid>.log``, one file per
pod object, so a pod re-created under the same name never shows its
predecessor's output; ``<namespace>_<pod>.log`` is a symlink to the latest
pod's file, for people and tests that look a pod up by name. The files are
what ``kubectl logs`` shows: the nodes' kubelet endpoint is the harness's log
server (``kubeletlogs``), which serves them until the pod is deleted.

Pids are recorded in ``<state>/pods/<namespace>_<pod>.json`` while the
process lives, which is how tests count the processes. This module is
development and test infrastructure; the shipped package never imports it.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import kubernetes
import urllib3

from kubetask_dev import controlplane, kubeletlogs

SELECTOR = "app.kubernetes.io/part-of=kubetask"
#: Pods of these components get a process; other kubetask pods (the chart's
#: bundled PostgreSQL, say) only get their deletion acknowledged.
RUN_COMPONENTS = {"operator", "worker"}
#: Pods of this component run once (restartPolicy Never) and get their status from the harness.
TASK_COMPONENT = "task"
EXITED_ANNOTATION = "kubetask.dev/exited"
DEFAULT_ENTRYPOINT = ["kubetask"]
UNPULLABLE_REGISTRY = "unpullable.invalid"
"""Images from this registry host cannot be pulled (see the module docstring)."""
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
IMAGE_BACKOFF_SECONDS = 1.0
"""How long a container stays ``ErrImagePull`` before ``ImagePullBackOff`` (the kubelet's first back-off: 10 s)."""
CONFIG_RETRY_SECONDS = 2.0
"""How often a container waiting for a missing Secret or ConfigMap looks again."""

log = logging.getLogger("kubetask_dev.podrunner")

BACKOFF_RESET_SECONDS = 60.0
"""A process that ran this long before it exited restarts after the shortest delay again, as the kubelet
resets its crash-loop backoff after a pod has run fine for a while (there: 10 minutes)."""


@dataclasses.dataclass
class PodProcess:
    namespace: str
    name: str
    uid: str
    component: str = ""
    container: str = ""
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    stopping: bool = False
    log_path: pathlib.Path | None = None
    exited: threading.Event = dataclasses.field(default_factory=threading.Event)
    """Set once the current process has exited and been reaped (a new one per start)."""
    waiting: str = "ContainerCreating"
    """Why no process runs yet, for a log request before the start."""
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    """Set when the pod is being deleted or the harness stops: a task pod's process must not start."""
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    """Orders a task pod's start against its deletion: a deleted pod's process never starts."""
    supervisor: threading.Thread | None = None
    """A task pod's thread: starts the process, waits for it, writes the pod status."""
    conditions: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    """A task pod's conditions as last written: type → (status, lastTransitionTime)."""


def registry_host(image: str) -> str:
    """The registry host of an image reference ("" for Docker Hub's short names), as the runtime reads it."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first.split(":", 1)[0]
    return ""


def exit_code(returncode: int) -> int:
    """A runtime's exit code: the process's own, or 128+N when signal N ended it."""
    return 128 - returncode if returncode < 0 else returncode


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(timestamp: str | None) -> float:
    if not timestamp:
        return 0.0
    started = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return max(0.0, (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds())


class Runner:
    def __init__(self, state_dir: pathlib.Path) -> None:
        self.state_dir = state_dir
        self.plane = controlplane.ControlPlane.load(state_dir)
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(self.plane.kubeconfig), client_configuration=config)
        self.api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(config))
        self.pods: dict[str, PodProcess] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        (state_dir / "pods").mkdir(exist_ok=True)
        self.logs = state_dir / "logs" / "pods"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.venv_bin = pathlib.Path(sys.executable).parent
        self.fake_nodes: set[str] = set()
        self.log_server: kubeletlogs.LogServer | None = None
        if "kubelet" in self.plane.ports:
            self.log_server = kubeletlogs.LogServer(state_dir / "pki", self.plane.ports["kubelet"], self.log_source)

    # -- environment ----------------------------------------------------------------

    def _field(self, pod: dict[str, Any], path: str) -> str:
        meta = pod["metadata"]
        simple = {
            "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
            "metadata.uid": meta.get("uid"), "spec.nodeName": pod["spec"].get("nodeName"),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName"),
            "status.podIP": pod.get("status", {}).get("podIP"), "status.hostIP": pod.get("status", {}).get("hostIP"),
        }
        if path in simple:
            return str(simple[path] or "")
        for kind in ("labels", "annotations"):
            prefix = f"metadata.{kind}['"
            if path.startswith(prefix):
                return str((meta.get(kind) or {}).get(path[len(prefix):-2], ""))
        raise ValueError(f"pod {meta['name']}: fieldRef {path!r} is not supported by the dev harness")

    def _secret(self, namespace: str, name: str) -> dict[str, str]:
        secret = self.api.read_namespaced_secret(name, namespace)
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def _configmap(self, namespace: str, name: str) -> dict[str, str]:
        return dict(self.api.read_namespaced_config_map(name, namespace).data or {})

    def environment(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                env.update({prefix + k: v for k, v in self._secret(namespace, source["secretRef"]["name"]).items()})
            if "configMapRef" in source:
                env.update({prefix + k: v for k, v in self._configmap(namespace, source["configMapRef"]["name"]).items()})
        for item in container.get("env") or []:
            value_from = item.get("valueFrom")
            if value_from is None:
                value = item.get("value", "")
                # $(VAR) references to earlier variables, as the kubelet expands them.
                for key, known in env.items():
                    value = value.replace(f"$({key})", known)
                env[item["name"]] = value
            elif "fieldRef" in value_from:
                env[item["name"]] = self._field(pod, value_from["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in value_from:
                ref = value_from["secretKeyRef"]
                env[item["name"]] = self._secret(namespace, ref["name"])[ref["key"]]
            elif "configMapKeyRef" in value_from:
                ref = value_from["configMapKeyRef"]
                env[item["name"]] = self._configmap(namespace, ref["name"])[ref["key"]]
        return env

    def credentials(self, pod: dict[str, Any], workdir: pathlib.Path) -> dict[str, str]:
        """A kubeconfig with a bound ServiceAccount token, unless the pod opts out."""
        spec = pod["spec"]
        if spec.get("automountServiceAccountToken") is False:
            return {}
        account = spec.get("serviceAccountName") or "default"
        meta = pod["metadata"]
        request = {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400,
                     "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]}},
        }
        code, body = self.plane.request(
            f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token", method="POST", body=request)
        if code != 201:
            raise RuntimeError(f"TokenRequest for {meta['namespace']}/{account}: {code} {body}")
        path = workdir / "kubeconfig"
        text = json.loads(controlplane.kubeconfig_text(self.plane.server, self.plane.ca_file, body["status"]["token"], account))
        text["contexts"][0]["context"]["namespace"] = meta["namespace"]
        path.write_text(json.dumps(text))
        return {"KUBECONFIG": str(path), "POD_NAMESPACE": meta["namespace"]}

    # -- processes ------------------------------------------------------------------

    def _key(self, pod: dict[str, Any]) -> str:
        return f"{pod['metadata']['namespace']}_{pod['metadata']['name']}"

    def process_env(self, pod: dict[str, Any], container: dict[str, Any], workdir: pathlib.Path) -> dict[str, str]:
        return {
            "PATH": f"{self.venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(workdir), "PYTHONUNBUFFERED": "1", "TMPDIR": str(workdir),
            # A checkout run with its tree first on the path (a git worktree sharing a venv) runs its own
            # kubetask in the pods too, not the one the venv was installed from.
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
            **self.environment(pod, container), **self.credentials(pod, workdir),
        }

    def log_file(self, pod: dict[str, Any]) -> pathlib.Path:
        """The pod's output file (created), with ``<namespace>_<pod>.log`` pointing at it."""
        meta = pod["metadata"]
        path = self.logs / f"{meta['namespace']}_{meta['name']}_{meta['uid']}.log"
        path.touch()
        link = self.logs / f"{meta['namespace']}_{meta['name']}.log"
        if not link.is_symlink() or os.readlink(link) != path.name:
            temporary = self.logs / f".{link.name}.{os.getpid()}.link"
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(path.name)
            os.replace(temporary, link)
        return path

    def spawn(self, pod: dict[str, Any], entry: PodProcess, argv: list[str], env: dict[str, str],
               cwd: pathlib.Path) -> subprocess.Popen[bytes]:
        entry.log_path = self.log_file(pod)
        entry.exited = threading.Event()
        with open(entry.log_path, "ab") as logfile:
            proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=logfile, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        entry.proc = proc
        entry.started_at = time.monotonic()
        (self.state_dir / "pods" / f"{self._key(pod)}.json").write_text(
            json.dumps({"pid": proc.pid, "uid": entry.uid, "command": argv}))
        log.info("started %s/%s pid %d: %s", entry.namespace, entry.name, proc.pid, argv)
        return proc

    def start(self, pod: dict[str, Any], entry: PodProcess) -> None:
        container = pod["spec"]["containers"][0]
        command = list(container.get("command") or DEFAULT_ENTRYPOINT) + list(container.get("args") or [])
        workdir = self.state_dir / "pods" / self._key(pod)
        workdir.mkdir(parents=True, exist_ok=True)
        env = self.process_env(pod, container, workdir)
        executable = shutil.which(command[0], path=env["PATH"])
        if executable is None:
            raise RuntimeError(f"pod {entry.name}: command {command[0]!r} not found on {env['PATH']}")
        self.spawn(pod, entry, [executable, *command[1:]], env, workdir)

    def stop_process(self, entry: PodProcess, proc: subprocess.Popen[bytes], grace: float) -> None:
        """SIGTERM to the process group; SIGKILL once ``grace`` seconds have passed and it still runs."""
        if proc.poll() is not None:
            return
        log.info("SIGTERM %s/%s pid %d (grace %ss)", entry.namespace, entry.name, proc.pid, grace)
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.info("SIGKILL %s/%s pid %d after %ss", entry.namespace, entry.name, proc.pid, grace)
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()

    def terminate(self, pod: dict[str, Any], entry: PodProcess, gone: bool = False) -> None:
        """Stop the pod's process; then mark the pod exited so kwok removes it, unless it is ``gone`` already
        (a finished pod is removed by the API server the moment it is deleted: nothing to mark)."""
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        with entry.lock:
            entry.stop.set()
            proc = entry.proc
        if proc is not None:
            self.stop_process(entry, proc, grace)
            entry.exited.set()
        if entry.supervisor is not None:
            entry.supervisor.join(timeout=30)  # a task pod's last status goes out before the pod goes
        self.forget(pod)
        if gone:
            return
        try:
            # The uid is a precondition: never mark a newer pod that took the name meanwhile.
            self.api.patch_namespaced_pod(entry.name, entry.namespace, {"metadata": {
                "uid": entry.uid, "annotations": {EXITED_ANNOTATION: "true"}}})
        except kubernetes.client.ApiException as err:
            if err.status not in (404, 409):
                raise

    def forget(self, pod: dict[str, Any]) -> None:
        path = self.state_dir / "pods" / f"{self._key(pod)}.json"
        try:
            recorded = json.loads(path.read_text()).get("uid")
        except (OSError, ValueError):
            return
        if recorded == pod["metadata"]["uid"]:  # not a newer pod's process under the same name
            path.unlink(missing_ok=True)

    def handle(self, pod: dict[str, Any], deleted: bool = False) -> None:
        key = self._key(pod)
        meta = pod["metadata"]
        with self.lock:
            entry = self.pods.get(key)
            if entry is not None and entry.uid != meta["uid"]:
                entry = None  # a new pod with a re-used name
            if deleted or meta.get("deletionTimestamp"):
                if entry is None:
                    entry = self.pods[key] = PodProcess(meta["namespace"], meta["name"], meta["uid"])
                if entry.stopping:
                    return
                entry.stopping = True
                # A finished pod deleted with no grace is removed by the API server itself: nothing to mark.
                gone = deleted or (meta.get("deletionGracePeriodSeconds") == 0
                                   and pod.get("status", {}).get("phase") in ("Succeeded", "Failed"))
                threading.Thread(target=self._terminate_then_drop, args=(pod, entry, key, gone), daemon=True).start()
                return
            component = (meta.get("labels") or {}).get("app.kubernetes.io/component")
            if component == TASK_COMPONENT:
                if entry is None:
                    self._adopt_task(pod, key)
                return
            if pod.get("status", {}).get("phase") != "Running":
                return
            if component not in RUN_COMPONENTS:
                return
            if entry is None:
                entry = self.pods[key] = PodProcess(meta["namespace"], meta["name"], meta["uid"], component,
                                                    pod["spec"]["containers"][0]["name"])
            if entry.proc is None:
                self._start_logged(pod, entry)
            entry_pod = pod
            self._latest[key] = entry_pod

    def _terminate_then_drop(self, pod: dict[str, Any], entry: PodProcess, key: str, gone: bool = False) -> None:
        try:
            self.terminate(pod, entry, gone)
        except Exception:
            log.exception("stopping %s", key)
        with self.lock:
            if self.pods.get(key) is entry:
                del self.pods[key]
                self._latest.pop(key, None)

    def _start_logged(self, pod: dict[str, Any], entry: PodProcess) -> None:
        try:
            self.start(pod, entry)
        except Exception:
            log.exception("starting %s/%s", entry.namespace, entry.name)
            entry.next_start = time.monotonic() + 2

    def reap(self) -> None:
        """Restart processes that exited while their pod lives (restartPolicy Always)."""
        now = time.monotonic()
        with self.lock:
            for key, entry in self.pods.items():
                if entry.stopping or entry.component == TASK_COMPONENT:
                    continue
                pod = self._latest.get(key)
                if pod is None:
                    continue
                if entry.proc is not None and entry.proc.poll() is not None:
                    log.info("%s/%s exited with %s", entry.namespace, entry.name, entry.proc.returncode)
                    entry.exited.set()
                    self.forget(pod)
                    entry.proc = None
                    if now - entry.started_at >= BACKOFF_RESET_SECONDS:
                        entry.restarts = 0  # it ran fine for a while: a new crash, not the same crash loop
                    entry.restarts += 1
                    entry.next_start = now + min(10.0, 0.5 * 2 ** min(entry.restarts, 5))
                if entry.proc is None and now >= entry.next_start:
                    self._start_logged(pod, entry)

    # -- task pods (restartPolicy Never, status written here) ------------------------

    def _is_fake_node(self, name: str) -> bool:
        """A kwok node, whose pods the harness runs (a real kubelet's node runs its own)."""
        if name not in self.fake_nodes:
            try:
                node = self.api.read_node(name)
            except kubernetes.client.ApiException:
                return False
            key, value = FAKE_NODE_ANNOTATION
            if ((node.metadata and node.metadata.annotations) or {}).get(key) != value:
                return False
            self.fake_nodes.add(name)
        return True

    def _adopt_task(self, pod: dict[str, Any], key: str) -> None:
        """A task pod seen for the first time (under ``self.lock``): supervise it, or keep its finished log."""
        meta, spec = pod["metadata"], pod["spec"]
        entry = PodProcess(meta["namespace"], meta["name"], meta["uid"], TASK_COMPONENT, spec["containers"][0]["name"])
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            entry.log_path = self.log_file(pod)  # finished before this harness started: its output stays readable
            entry.exited.set()
            self.pods[key] = entry
            return
        if not spec.get("nodeName") or not self._is_fake_node(spec["nodeName"]):
            return
        entry.supervisor = threading.Thread(target=self._supervise, args=(pod, entry), daemon=True,
                                            name=f"task-pod {key}")
        self.pods[key] = entry
        entry.supervisor.start()

    def _supervise(self, pod: dict[str, Any], entry: PodProcess) -> None:
        try:
            TaskPod(self, pod, entry).run()
        except Exception:
            log.exception("task pod %s/%s", entry.namespace, entry.name)
        finally:
            entry.exited.set()

    def patch_status(self, entry: PodProcess, status: dict[str, Any], attempts: int = 30) -> None:
        """A JSON merge patch of the pod's status (lists are replaced whole), retried while the API is away."""
        body = {"metadata": {"uid": entry.uid}, "status": status}
        for attempt in range(attempts):
            try:
                self.api.patch_namespaced_pod_status(entry.name, entry.namespace, body,
                                                     _content_type="application/merge-patch+json")
                return
            except kubernetes.client.ApiException as err:
                if err.status in (404, 409):  # gone, or a newer pod under the same name
                    return
                if attempt == attempts - 1 or err.status not in (429, 500, 503, 504):
                    raise
            except (OSError, urllib3.exceptions.HTTPError):
                if attempt == attempts - 1:
                    raise
            if self.stop_event.wait(1.0):
                return

    def log_source(self, namespace: str, pod: str, container: str) -> kubeletlogs.LogSource:
        """What the log server serves for ``namespace/pod``: the current pod object's output."""
        with self.lock:
            entry = self.pods.get(f"{namespace}_{pod}")
        if entry is None or (entry.stopping and entry.log_path is None):
            raise kubeletlogs.Unavailable(404, f'pods "{pod}" not found')
        if entry.container and container != entry.container:
            raise kubeletlogs.Unavailable(400, f'container "{container}" is not valid for pod "{pod}"')
        exited, path = entry.exited, entry.log_path
        if path is None:
            raise kubeletlogs.Unavailable(
                400, f'container "{container}" in pod "{pod}" is waiting to start: {entry.waiting}')
        return kubeletlogs.LogSource(path, exited)

    _latest: dict[str, dict[str, Any]]

    def run(self) -> None:
        self._latest = {}
        if self.log_server is not None:
            self.log_server.start()
        resource_version = ""
        while not self.stop_event.is_set():
            try:
                if not resource_version:
                    code, listing = self.plane.request(f"/api/v1/pods?labelSelector={SELECTOR}")
                    if code != 200:
                        raise RuntimeError(f"listing pods: {code} {listing}")
                    for pod in listing["items"]:
                        self.handle(pod)
                    resource_version = listing["metadata"]["resourceVersion"]
                watch = kubernetes.watch.Watch()
                for event in watch.stream(self.api.list_pod_for_all_namespaces, label_selector=SELECTOR,
                                          resource_version=resource_version, timeout_seconds=1,
                                          _request_timeout=10, allow_watch_bookmarks=True):
                    raw = event["raw_object"]
                    resource_version = raw["metadata"].get("resourceVersion", resource_version)
                    if event["type"] == "BOOKMARK":
                        continue
                    if event["type"] == "ERROR":
                        resource_version = ""
                        break
                    self.handle(raw, deleted=event["type"] == "DELETED")
                    self.reap()
                self.reap()
            except kubernetes.client.ApiException as err:
                if err.status == 410:
                    resource_version = ""
                else:
                    log.warning("pod watch failed: %s", err)
                    time.sleep(1)
            except Exception as err:  # the API server restarting, mostly
                log.warning("pod watch failed: %s", err)
                time.sleep(1)

    def shutdown(self) -> None:
        self.stop_event.set()
        if self.log_server is not None:
            self.log_server.close()
        with self.lock:
            entries = list(self.pods.values())
        for entry in entries:
            with entry.lock:
                entry.stop.set()
            if entry.proc is not None and entry.proc.poll() is None:
                _signal_group(entry.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for entry in entries:
            if entry.proc is None:
                continue
            try:
                entry.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(entry.proc.pid, signal.SIGKILL)
        for path in (self.state_dir / "pods").glob("*.json"):
            path.unlink(missing_ok=True)


class TaskPod:
    """One task pod's life on the fake node, as the kubelet lives it: start once, report, never restart."""

    def __init__(self, runner: Runner, pod: dict[str, Any], entry: PodProcess) -> None:
        self.runner = runner
        self.pod = pod
        self.entry = entry
        spec, status = pod["spec"], pod.get("status") or {}
        self.container: dict[str, Any] = spec["containers"][0]
        self.grace = float(spec.get("terminationGracePeriodSeconds", 30))
        self.start_time: str = status.get("startTime") or _now()
        self.deadline: float | None = None
        if spec.get("activeDeadlineSeconds") is not None:
            self.deadline = time.monotonic() + float(spec["activeDeadlineSeconds"]) - _age(self.start_time)
        self.scheduled = [c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"]
        self.container_id = f"harness://{entry.uid}"
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}

    def write(self, phase: str, state: dict[str, Any], ready: bool = False, **pod_fields: str) -> None:
        self.state = state
        now = _now()
        terminal = phase in ("Succeeded", "Failed")
        wanted = {"PodReadyToStartContainers": "True", "Initialized": "True",
                  "Ready": str(ready), "ContainersReady": str(ready)}
        for kind, value in wanted.items():
            if self.entry.conditions.get(kind, ("", ""))[0] != value:
                self.entry.conditions[kind] = (value, now)
        conditions = list(self.scheduled)
        for kind, (value, since) in self.entry.conditions.items():
            condition = {"type": kind, "status": value, "lastTransitionTime": since}
            if value == "False":
                condition["reason"] = "PodCompleted" if terminal else "ContainersNotReady"
                if not terminal:
                    condition["message"] = f"containers with unready status: [{self.container['name']}]"
            conditions.append(condition)
        self.runner.patch_status(self.entry, {
            "phase": phase, "startTime": self.start_time, "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "conditions": conditions, **pod_fields,
            "containerStatuses": [{
                "name": self.container["name"], "image": self.container.get("image", ""), "imageID": "",
                "containerID": self.container_id, "ready": ready, "started": "running" in state,
                "restartCount": 0, "state": state}],
        })

    def wait(self, seconds: float | None) -> str | None:
        """Sleep ``seconds`` (None: until something happens): "stop" on deletion, "deadline" when it passed."""
        limit = seconds
        if self.deadline is not None:
            remaining = max(0.0, self.deadline - time.monotonic())
            limit = remaining if limit is None else min(limit, remaining)
        if self.entry.stop.wait(timeout=limit) or self.runner.stop_event.is_set():
            return "stop"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "deadline"
        return None

    def wait_or_fail(self, seconds: float | None, reason: str) -> bool:
        """``wait``; True if the pod is done (deleted, or failed here for its deadline)."""
        self.entry.waiting = reason
        outcome = self.wait(seconds)
        if outcome == "deadline":
            self.write("Failed", self.state, reason="DeadlineExceeded", message=DEADLINE_MESSAGE)
        return outcome is not None

    def run(self) -> None:
        entry, pod, image = self.entry, self.pod, self.container.get("image", "")
        key = f"{entry.namespace}_{entry.name}_{entry.uid}"
        if (pod.get("status") or {}).get("phase") == "Running" or (self.runner.logs / f"{key}.log").exists():
            # Started by an earlier harness, whose processes ended with it: a node that lost its container.
            entry.log_path = self.runner.log_file(pod)
            self.write("Failed", {"terminated": {
                "exitCode": 137, "reason": "Error", "message": "the dev pod harness stopped while the process ran",
                "startedAt": self.start_time, "finishedAt": _now(), "containerID": self.container_id}})
            return
        if registry_host(image) == UNPULLABLE_REGISTRY:
            self.write("Pending", {"waiting": {"reason": "ErrImagePull", "message": (
                f'failed to pull and unpack image "{image}": failed to resolve reference "{image}": '
                f"{UNPULLABLE_REGISTRY} is the dev harness's unpullable registry")}})
            if self.wait_or_fail(IMAGE_BACKOFF_SECONDS, "ErrImagePull"):
                return
            self.write("Pending", {"waiting": {"reason": "ImagePullBackOff",
                                               "message": f'Back-off pulling image "{image}"'}})
            self.wait_or_fail(None, "ImagePullBackOff")
            return
        workdir = self.runner.state_dir / "pods" / key
        workdir.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                env = self.runner.process_env(pod, self.container, workdir)
                break
            except (kubernetes.client.ApiException, KeyError, RuntimeError, ValueError) as err:
                message = _config_error(err)
                if self.state.get("waiting", {}).get("message") != message:
                    self.write("Pending", {"waiting": {"reason": "CreateContainerConfigError", "message": message}})
                if self.wait_or_fail(CONFIG_RETRY_SECONDS, "CreateContainerConfigError"):
                    return
        command = list(self.container.get("command") or []) + list(self.container.get("args") or [])
        working_dir = pathlib.Path(self.container.get("workingDir") or workdir)
        cwd = working_dir if working_dir.is_dir() else workdir
        executable = shutil.which(command[0], path=env.get("PATH", "")) if command else None
        if executable is None:
            entry.log_path = self.runner.log_file(pod)
            message = ("no command specified" if not command else
                       "failed to create containerd task: failed to create shim task: OCI runtime create failed: "
                       f'runc create failed: unable to start container process: exec: "{command[0]}": '
                       "executable file not found in $PATH: unknown")
            self.write("Failed", {"terminated": {
                "exitCode": 128, "reason": "StartError", "message": message, "startedAt": "1970-01-01T00:00:00Z",
                "finishedAt": _now(), "containerID": self.container_id}})
            return
        with entry.lock:
            if entry.stop.is_set():
                return
            proc = self.runner.spawn(pod, entry, [executable, *command[1:]], env, cwd)
        started = _now()
        self.write("Running", {"running": {"startedAt": started}}, ready=True)
        past_deadline = False
        try:
            proc.wait(timeout=None if self.deadline is None else max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            past_deadline = True
            log.info("%s/%s: activeDeadlineSeconds passed", entry.namespace, entry.name)
            self.runner.stop_process(entry, proc, self.grace)
        _signal_group(proc.pid, signal.SIGKILL)  # the container's other processes end with its main one
        self.runner.forget(pod)
        entry.exited.set()
        if self.runner.stop_event.is_set():
            return  # the harness is stopping, not the container: the next harness reports the loss
        code = exit_code(proc.returncode)
        log.info("%s/%s exited with %d", entry.namespace, entry.name, code)
        terminated = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                     "startedAt": started, "finishedAt": _now(), "containerID": self.container_id}}
        if past_deadline:
            self.write("Failed", terminated, reason="DeadlineExceeded", message=DEADLINE_MESSAGE)
        else:
            self.write("Succeeded" if code == 0 else "Failed", terminated)


def _config_error(err: Exception) -> str:
    """The kubelet's message for an environment it cannot build (a missing Secret, ConfigMap or key)."""
    if isinstance(err, kubernetes.client.ApiException):
        try:
            return str(json.loads(err.body or "{}")["message"])
        except (ValueError, KeyError, TypeError):
            return f"{err.status} {err.reason}"
    if isinstance(err, KeyError):
        return f"couldn't find key {err.args[0]} in the referenced Secret or ConfigMap"
    return str(err)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def running_processes(state_dir: pathlib.Path, namespace: str | None = None) -> dict[str, int]:
    """Pod name → pid of every live harness process (what tests count)."""
    out: dict[str, int] = {}
    for path in (state_dir / "pods").glob("*.json"):
        ns, name = path.stem.split("_", 1)
        if namespace is not None and ns != namespace:
            continue
        try:
            pid = int(json.loads(path.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            continue
        if controlplane._pid_alive(pid):
            out[name] = pid
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=pathlib.Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    runner = Runner(args.state_dir)

    def on_signal(signum: int, frame: Any) -> None:
        runner.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        runner.run()
    finally:
        runner.shutdown()


if __name__ == "__main__":
    main()
