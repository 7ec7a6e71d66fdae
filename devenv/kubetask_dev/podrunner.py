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

Pids are recorded in ``<state>/pods/<namespace>_<pod>.json`` while the
process lives, which is how tests count the processes. This module is
development and test infrastructure; the shipped package never imports it.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
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

from kubetask_dev import controlplane

SELECTOR = "app.kubernetes.io/part-of=kubetask"
#: Pods of these components get a process; other kubetask pods (the chart's
#: bundled PostgreSQL, say) only get their deletion acknowledged.
RUN_COMPONENTS = {"operator", "worker"}
EXITED_ANNOTATION = "kubetask.dev/exited"
DEFAULT_ENTRYPOINT = ["kubetask"]

log = logging.getLogger("kubetask_dev.podrunner")

BACKOFF_RESET_SECONDS = 60.0
"""A process that ran this long before it exited restarts after the shortest delay again, as the kubelet
resets its crash-loop backoff after a pod has run fine for a while (there: 10 minutes)."""


@dataclasses.dataclass
class PodProcess:
    namespace: str
    name: str
    uid: str
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    stopping: bool = False


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
        (state_dir / "logs" / "pods").mkdir(parents=True, exist_ok=True)
        self.venv_bin = pathlib.Path(sys.executable).parent

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

    def start(self, pod: dict[str, Any], entry: PodProcess) -> None:
        container = pod["spec"]["containers"][0]
        command = list(container.get("command") or DEFAULT_ENTRYPOINT) + list(container.get("args") or [])
        workdir = self.state_dir / "pods" / self._key(pod)
        workdir.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": f"{self.venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(workdir), "PYTHONUNBUFFERED": "1", "TMPDIR": str(workdir),
            # A checkout run with its tree first on the path (a git worktree sharing a venv) runs its own
            # kubetask in the pods too, not the one the venv was installed from.
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
            **self.environment(pod, container), **self.credentials(pod, workdir),
        }
        executable = shutil.which(command[0], path=env["PATH"])
        if executable is None:
            raise RuntimeError(f"pod {entry.name}: command {command[0]!r} not found on {env['PATH']}")
        logfile = open(self.state_dir / "logs" / "pods" / f"{self._key(pod)}.log", "ab")
        entry.proc = subprocess.Popen([executable, *command[1:]], env=env, cwd=workdir, stdout=logfile,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        entry.started_at = time.monotonic()
        logfile.close()
        (self.state_dir / "pods" / f"{self._key(pod)}.json").write_text(
            json.dumps({"pid": entry.proc.pid, "uid": entry.uid, "command": command}))
        log.info("started %s/%s pid %d: %s", entry.namespace, entry.name, entry.proc.pid, command)

    def terminate(self, pod: dict[str, Any], entry: PodProcess) -> None:
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        proc = entry.proc
        if proc is not None and proc.poll() is None:
            log.info("SIGTERM %s/%s pid %d (grace %ss)", entry.namespace, entry.name, proc.pid, grace)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.info("SIGKILL %s/%s pid %d after %ss", entry.namespace, entry.name, proc.pid, grace)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._forget(pod)
        try:
            self.api.patch_namespaced_pod(entry.name, entry.namespace,
                                          {"metadata": {"annotations": {EXITED_ANNOTATION: "true"}}})
        except kubernetes.client.ApiException as err:
            if err.status != 404:
                raise

    def _forget(self, pod: dict[str, Any]) -> None:
        (self.state_dir / "pods" / f"{self._key(pod)}.json").unlink(missing_ok=True)

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
                threading.Thread(target=self._terminate_then_drop, args=(pod, entry, key), daemon=True).start()
                return
            if pod.get("status", {}).get("phase") != "Running":
                return
            if (meta.get("labels") or {}).get("app.kubernetes.io/component") not in RUN_COMPONENTS:
                return
            if entry is None:
                entry = self.pods[key] = PodProcess(meta["namespace"], meta["name"], meta["uid"])
            if entry.proc is None:
                self._start_logged(pod, entry)
            entry_pod = pod
            self._latest[key] = entry_pod

    def _terminate_then_drop(self, pod: dict[str, Any], entry: PodProcess, key: str) -> None:
        try:
            self.terminate(pod, entry)
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
                if entry.stopping:
                    continue
                pod = self._latest.get(key)
                if pod is None:
                    continue
                if entry.proc is not None and entry.proc.poll() is not None:
                    log.info("%s/%s exited with %s", entry.namespace, entry.name, entry.proc.returncode)
                    self._forget(pod)
                    entry.proc = None
                    if now - entry.started_at >= BACKOFF_RESET_SECONDS:
                        entry.restarts = 0  # it ran fine for a while: a new crash, not the same crash loop
                    entry.restarts += 1
                    entry.next_start = now + min(10.0, 0.5 * 2 ** min(entry.restarts, 5))
                if entry.proc is None and now >= entry.next_start:
                    self._start_logged(pod, entry)

    _latest: dict[str, dict[str, Any]]

    def run(self) -> None:
        self._latest = {}
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
        with self.lock:
            entries = list(self.pods.values())
        for entry in entries:
            if entry.proc is not None and entry.proc.poll() is None:
                os.killpg(entry.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for entry in entries:
            if entry.proc is None:
                continue
            try:
                entry.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(entry.proc.pid, signal.SIGKILL)
        for path in (self.state_dir / "pods").glob("*.json"):
            path.unlink(missing_ok=True)


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
