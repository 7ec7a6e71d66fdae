"""A real Kubernetes control plane on this machine, without Docker.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the kwok
controller run as plain local processes bound to 127.0.0.1 on free ports, with
all state (certificates, etcd data, logs, kubeconfig) under one directory.
This is what controller-runtime's envtest does, plus the controller-manager
and scheduler so that Deployments get ReplicaSets and Pods, and kwok so that
fake nodes are Ready and scheduled pods go Running. Nothing runs inside those
pods: ``podrunner`` runs a local process for each pod that kubetask owns.

The fake nodes have the address 127.0.0.1 and, as their kubelet endpoint, the
port of the harness's log server (``kubeletlogs``), so ``kubectl logs`` works
through the API server as on a real cluster; no component ever sends traffic
to any other address.

Authentication: a static admin token in group ``system:masters`` for the
admin kubeconfig and the control-plane components; ServiceAccount tokens
(TokenRequest) for everything else. Authorization is ``RBAC``, so a test can
prove that a ServiceAccount without rights is refused.

The processes are started in their own sessions and recorded in
``<state>/pids.json``, so ``make cluster`` can leave them running in the
background and ``make cluster-down`` can stop every one of them later.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from kubetask_dev import binaries
from kubetask_dev.postgres import free_port

STAGES_FILE = pathlib.Path(__file__).with_name("kwok-stages.yaml")
SERVICE_CIDR = "10.96.0.0/16"
DEFAULT_NODES = 2


def _log(message: str) -> None:
    print(f"[kubetask cluster] {message}", file=sys.stderr, flush=True)


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(pki: pathlib.Path, extra_ips: tuple[str, ...] = ()) -> None:
    """CA, apiserver serving certificate, the ServiceAccount signing key, and the apiserver's kubelet client."""
    pki.mkdir(parents=True, exist_ok=True)
    if not (pki / "apiserver.crt").exists():
        _make_server_pki(pki, extra_ips)
    if not (pki / "kubelet-client.crt").exists():
        # How the apiserver authenticates to a real kubelet (logs, exec, port-forward); kwok ignores it.
        client_certificate(pki, "kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")


def _make_server_pki(pki: pathlib.Path, extra_ips: tuple[str, ...]) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "3650", "-subj", "/CN=kubetask-dev-ca", cwd=pki)
    ips = ",".join(f"IP:{ip}" for ip in ("127.0.0.1", "10.96.0.1", *extra_ips))
    sans = f"subjectAltName={ips},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
             "-subj", "/CN=kube-apiserver", "-addext", sans, cwd=pki)
    (pki / "ext.cnf").write_text(sans + "\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "apiserver.crt", "-days", "3650", "-extfile", "ext.cnf", cwd=pki)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def client_certificate(pki: pathlib.Path, name: str, subject: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A client certificate signed by the cluster CA: ``O=`` are the groups, ``CN=`` the user."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", subject, cwd=pki)
    (pki / f"{name}.cnf").write_text("extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "3650", "-extfile", f"{name}.cnf", cwd=pki)
    return pki / f"{name}.crt", pki / f"{name}.key"


def serving_certificate(pki: pathlib.Path, name: str, subject: str,
                        ips: tuple[str, ...] = ("127.0.0.1",)) -> tuple[pathlib.Path, pathlib.Path]:
    """A TLS server certificate for ``ips``, signed by the cluster CA (the harness's kubelet endpoint)."""
    sans = "subjectAltName=" + ",".join(f"IP:{ip}" for ip in ips) + ",DNS:localhost"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", subject, cwd=pki)
    (pki / f"{name}.cnf").write_text(sans + "\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "3650", "-extfile", f"{name}.cnf", cwd=pki)
    return pki / f"{name}.crt", pki / f"{name}.key"


def kubeconfig_text(server: str, ca_file: pathlib.Path, token: str, user: str = "admin") -> str:
    return json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubetask-dev", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "kubetask-dev", "context": {"cluster": "kubetask-dev", "user": user, "namespace": "default"}}],
        "current-context": "kubetask-dev",
    }, indent=2)


@dataclasses.dataclass
class ControlPlane:
    """A running control plane; ``state_dir`` holds everything it needs."""

    state_dir: pathlib.Path
    server: str
    token: str
    ports: dict[str, int]

    @property
    def kubeconfig(self) -> pathlib.Path:
        return self.state_dir / "kubeconfig"

    @property
    def ca_file(self) -> pathlib.Path:
        return self.state_dir / "pki" / "ca.crt"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(self, path: str, token: str | None = None, method: str = "GET", body: Any = None) -> tuple[int, Any]:
        """A raw HTTPS call, for readiness checks and RBAC proofs."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, method=method, data=data)
        req.add_header("Authorization", f"Bearer {token or self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=10) as resp:
                return resp.status, _decode(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, _decode(err.read())

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binaries.bin_dir() / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input, text=True, capture_output=True, check=check, timeout=120,
        )

    def stop(self) -> None:
        stop(self.state_dir)

    def restart_component(self, name: str, down_seconds: float = 0.0) -> None:
        """Stop one component (``kube-apiserver``, ``etcd`` …) and start it again with the same command."""
        pids = json.loads((self.state_dir / "pids.json").read_text())
        _terminate_group(pids[name], timeout=15)
        for proc in [p for p in _CHILDREN if p.pid == pids[name]]:
            proc.wait()
            _CHILDREN.remove(proc)
        time.sleep(down_seconds)
        spec = json.loads((self.state_dir / "commands.json").read_text())[name]
        _spawn(self.state_dir, name, spec["cmd"], spec["env"])
        if name == "kube-apiserver":
            self.wait_ready()

    # -- lifecycle -----------------------------------------------------------------

    @classmethod
    def load(cls, state_dir: pathlib.Path) -> "ControlPlane":
        info = json.loads((state_dir / "cluster.json").read_text())
        return cls(state_dir=state_dir, server=info["server"], token=info["token"], ports=info["ports"])

    @classmethod
    def start(cls, state_dir: pathlib.Path, nodes: int = DEFAULT_NODES, harness: bool = True,
              harness_env: dict[str, str] | None = None, advertise_address: str = "127.0.0.1") -> "ControlPlane":
        """Start everything; on any failure stop what was started and re-raise.

        ``advertise_address`` is what the ``kubernetes`` Service's endpoints say: the real node
        (node.py) passes the host's address on its pod bridge, where it forwards to 127.0.0.1,
        so that pods reach the API server; the server itself listens on 127.0.0.1 only.
        """
        try:
            return cls._start(state_dir, nodes, harness, harness_env, advertise_address)
        except BaseException:
            stop(state_dir)
            raise

    @classmethod
    def _start(cls, state_dir: pathlib.Path, nodes: int, harness: bool,
               harness_env: dict[str, str] | None, advertise_address: str) -> "ControlPlane":
        started = time.monotonic()
        bins = binaries.ensure()
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "logs").mkdir(exist_ok=True)
        pki = state_dir / "pki"
        make_pki(pki, extra_ips=() if advertise_address == "127.0.0.1" else (advertise_address,))
        # "kubelet": the harness's log server, which the kwok nodes name as their kubelet endpoint.
        ports = {name: free_port() for name in ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler",
                                                "kwok", "kubelet")}
        token = secrets.token_hex(24)
        (pki / "tokens.csv").write_text(f'{token},kubetask-admin,kubetask-admin,"system:masters"\n')
        server = f"https://127.0.0.1:{ports['apiserver']}"
        plane = cls(state_dir=state_dir, server=server, token=token, ports=ports)
        plane.kubeconfig.write_text(kubeconfig_text(server, pki / "ca.crt", token))
        (state_dir / "cluster.json").write_text(json.dumps({"server": server, "token": token, "ports": ports}))
        kubeconfig = str(plane.kubeconfig)

        etcd_data = state_dir / "etcd"
        _spawn(state_dir, "etcd", [
            str(bins.etcd), "--name", "kubetask", "--data-dir", str(etcd_data),
            "--listen-client-urls", f"http://127.0.0.1:{ports['etcd']}",
            "--advertise-client-urls", f"http://127.0.0.1:{ports['etcd']}",
            "--listen-peer-urls", f"http://127.0.0.1:{ports['etcd_peer']}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{ports['etcd_peer']}",
            "--initial-cluster", f"kubetask=http://127.0.0.1:{ports['etcd_peer']}",
            "--unsafe-no-fsync", "--log-level", "warn", "--quota-backend-bytes", str(4 * 1024**3),
        ])
        _spawn(state_dir, "kube-apiserver", [
            str(bins.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            "--bind-address=127.0.0.1", f"--advertise-address={advertise_address}", f"--secure-port={ports['apiserver']}",
            f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'kubelet-client.key'}",
            # Reach kubelets by their address: a node's name is in no DNS here.
            "--kubelet-preferred-address-types=InternalIP",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--token-auth-file={pki / 'tokens.csv'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--authorization-mode=Node,RBAC",
            "--allow-privileged=true", "--enable-priority-and-fairness=false",
            "--max-requests-inflight=2000", "--max-mutating-requests-inflight=1000",
            "--event-ttl=1h", "--v=0",
        ])
        plane.wait_ready()
        _spawn(state_dir, "kube-controller-manager", [
            str(bins.kube_controller_manager), f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['controller_manager']}",
            "--leader-elect=false", f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}", "--use-service-account-credentials=false",
            "--kube-api-qps=500", "--kube-api-burst=1000", "--concurrent-deployment-syncs=10",
            "--concurrent-replicaset-syncs=10", "--concurrent-job-syncs=10", "--v=0",
        ])
        _spawn(state_dir, "kube-scheduler", [
            str(bins.kube_scheduler), f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}", "--leader-elect=false", "--v=0",
        ])
        _spawn(state_dir, "kwok", [
            str(bins.kwok), f"--kubeconfig={kubeconfig}", f"--config={STAGES_FILE}",
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--server-address=127.0.0.1:{ports['kwok']}", "--node-lease-duration-seconds=40",
            # The nodes' InternalIP, where the API server sends kubelet calls (pods/log): the harness listens
            # there. Pod IPs from --cidr are labels only; nothing sends traffic to them.
            "--cidr=10.244.0.0/16", "--node-ip=127.0.0.1",
        ])
        plane.add_nodes(nodes)
        if harness:
            _spawn(state_dir, "podrunner", [
                sys.executable, "-m", "kubetask_dev.podrunner", "--state-dir", str(state_dir),
            ], env=harness_env)
        plane.wait_nodes_ready(nodes)
        plane.wait_default_serviceaccount()
        _log(f"control plane ready at {server} in {time.monotonic() - started:.1f}s (state in {state_dir})")
        return plane

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            _check_alive(self.state_dir)
            try:
                code, body = self.request("/readyz")
                if code == 200:
                    return
                last = (code, body)
            except (OSError, ssl.SSLError) as err:
                last = err
            time.sleep(0.2)
        raise TimeoutError(f"kube-apiserver not ready after {timeout}s: {last!r}; see {self.state_dir / 'logs'}")

    def add_nodes(self, count: int) -> None:
        """Fake nodes, created with the harness's log server as their kubelet endpoint.

        The port goes into the status on creation, as a kubelet registers its node: kwok's stages patch
        the node status and never name ``daemonEndpoints``, so it stays.
        """
        endpoints = {"kubeletEndpoint": {"Port": self.ports["kubelet"]}} if "kubelet" in self.ports else {}
        for index in range(count):
            name = f"kwok-node-{index}"
            node = {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                               "kubernetes.io/arch": "amd64", "type": "kwok"},
                },
                "status": {"allocatable": {"cpu": "64", "memory": "256Gi", "pods": "250"},
                           "capacity": {"cpu": "64", "memory": "256Gi", "pods": "250"},
                           "daemonEndpoints": endpoints},
            }
            code, body = self.request("/api/v1/nodes", method="POST", body=node)
            if code not in (201, 409):
                raise RuntimeError(f"creating node {name}: {code} {body}")

    def wait_nodes_ready(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        ready = 0
        while time.monotonic() < deadline:
            _check_alive(self.state_dir)
            code, body = self.request("/api/v1/nodes")
            if code == 200:
                ready = sum(
                    1 for node in body["items"]
                    for cond in node.get("status", {}).get("conditions", [])
                    if cond["type"] == "Ready" and cond["status"] == "True"
                )
                if ready >= count:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{ready}/{count} kwok nodes Ready after {timeout}s; see {self.state_dir / 'logs' / 'kwok.log'}")

    def wait_default_serviceaccount(self, namespace: str = "default", timeout: float = 60.0,
                                    create_after: float = 15.0) -> None:
        """Pods cannot be created in a namespace until its ``default`` ServiceAccount exists.

        The controller-manager makes it; after an apiserver restart its namespace watch has been seen to
        stay stale for over a minute (a CI run, 2026-12-04). Past ``create_after`` seconds the harness
        creates the account itself, as an admin would (a 409 means the controller got there first).
        """
        start = time.monotonic()
        deadline = start + timeout
        created = False
        while time.monotonic() < deadline:
            code, _ = self.request(f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
            if code == 200:
                return
            if not created and time.monotonic() - start > create_after:
                _log(f"ServiceAccount {namespace}/default not made by the controller-manager after "
                     f"{create_after:g}s; creating it")
                self.request(f"/api/v1/namespaces/{namespace}/serviceaccounts", method="POST",
                             body={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}})
                created = True
            time.sleep(0.2)
        raise TimeoutError(f"ServiceAccount {namespace}/default not created after {timeout}s")


_CHILDREN: list[subprocess.Popen[bytes]] = []


def _decode(payload: bytes) -> Any:
    try:
        return json.loads(payload or b"null")
    except ValueError:
        return payload.decode(errors="replace")


def _spawn(state_dir: pathlib.Path, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
    commands_file = state_dir / "commands.json"
    commands = json.loads(commands_file.read_text()) if commands_file.exists() else {}
    commands[name] = {"cmd": cmd, "env": env or {}}
    commands_file.write_text(json.dumps(commands))
    log = open(state_dir / "logs" / f"{name}.log", "ab")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, **(env or {})},
    )
    log.close()
    _CHILDREN.append(proc)  # a Popen dropped while its process runs warns; keep it until we stop it
    pids_file = state_dir / "pids.json"
    pids = json.loads(pids_file.read_text()) if pids_file.exists() else {}
    pids[name] = proc.pid
    pids_file.write_text(json.dumps(pids))


def _check_alive(state_dir: pathlib.Path) -> None:
    pids = json.loads((state_dir / "pids.json").read_text())
    for name, pid in pids.items():
        try:
            finished, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            finished, status = 0, 0
            if not _pid_alive(pid):
                finished = pid
        if finished:
            tail = (state_dir / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited during start-up (status {status}); last log lines:\n{tail}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def stop(state_dir: pathlib.Path, timeout: float = 15.0) -> None:
    """Stop every process recorded in ``pids.json``: harness first, etcd last."""
    pids_file = state_dir / "pids.json"
    if not pids_file.exists():
        return
    pids: dict[str, int] = json.loads(pids_file.read_text())
    order = ["podrunner", "kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]
    names = [n for n in order if n in pids] + [n for n in pids if n not in order]
    for name in names:
        _terminate_group(pids[name], timeout)
    stopped = set(pids.values())
    for proc in [p for p in _CHILDREN if p.pid in stopped]:
        proc.wait()
        _CHILDREN.remove(proc)
    pids_file.unlink()


def _terminate_group(pid: int, timeout: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not _pid_alive(pid):
            break
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
