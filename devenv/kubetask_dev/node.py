"""A real Kubernetes node on this machine: containerd, runc, the kubelet, kube-proxy, CoreDNS.

kwok's nodes only pretend; this one runs containers. It joins the control
plane of ``controlplane.py`` (same CA, same API server) as ``kubetask-node``.

Network. Pods live on one Linux bridge that this module creates (``kt0``,
``POD_CIDR``), each in a network namespace made by containerd through the CNI
``bridge`` + ``host-local`` plugins, with routes only to the pod subnet and to
the Service range: no default route, no masquerade, and a ``FORWARD`` filter
of ours (chain ``KUBETASK-NODE``) that drops anything entering or leaving the
bridge from or to any other interface. Servers stay on 127.0.0.1; the host's
address on the bridge (``BRIDGE_IP``) carries only what pods must reach:

* the API server, through a forwarder (``socat``) from ``BRIDGE_IP`` to
  127.0.0.1; the API server advertises ``BRIDGE_IP``, so the ``kubernetes``
  Service (10.96.0.1, in the serving certificate) leads pods there;
* the host's PostgreSQL, the same way (``make node`` puts that address in the
  database Secret);
* the kubelet itself (``BRIDGE_IP:10250``, the node's InternalIP), which the
  API server calls for ``kubectl logs`` and ``exec``.

kube-proxy (iptables mode, NodePorts only on the bridge, conntrack sysctls
left alone) implements Services; CoreDNS runs as a pod behind the
``kube-dns`` Service and answers ``cluster.local`` only: there is no
``forward`` plugin, every other name is NXDOMAIN.

Host changes are recorded and undone by ``stop``: the sysctls the node needs
(``ip_forward``, ``bridge-nf-call-iptables``) and the ones the kubelet sets
(``protectKernelDefaults: false``) are restored to what they were, every
iptables chain the node, the kubelet and kube-proxy made is removed, pods'
network namespaces, veths and the bridge are deleted, mounts under the state
directory are unmounted and the node's cgroups removed. The kubelet puts all
pods under the cgroup ``/kubetask-node`` so that is one ``rmdir`` per
controller.

containerd is Debian's 1.6: the kubelet 1.35 still speaks CRI v1 to it and,
as 1.6 lacks the ``RuntimeConfig`` call, takes the cgroup driver from its own
configuration (``cgroupfs``) — a fallback Kubernetes 1.36 removes, which will
need containerd 2.x here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

from kubetask_dev import binaries, controlplane, postgres
from kubetask_dev import images as image_builds

NODE_NAME = "kubetask-node"
BRIDGE = "kt0"
POD_CIDR = "10.85.0.0/24"
BRIDGE_IP = "10.85.0.1"
SERVICE_CIDR = controlplane.SERVICE_CIDR
DNS_IP = "10.96.0.10"
CGROUP_ROOT = "kubetask-node"
CHAIN = "KUBETASK-NODE"
KUBELET_PORT = 10250
CNI_BIN_DIR = pathlib.Path("/usr/lib/cni")
# Host settings the node needs, and those the kubelet sets when protectKernelDefaults is false.
SYSCTLS_NEEDED = {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"}
SYSCTLS_TOUCHED = (
    "net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables", "vm/overcommit_memory", "vm/panic_on_oom",
    "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
)
IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle")
# Chains made by the kubelet (canaries, hints) and kube-proxy, besides our own.
CHAIN_PREFIXES = ("KUBE-", CHAIN)
APT_PACKAGES = ("containerd", "runc", "containernetworking-plugins", "iptables", "iproute2", "socat",
                "buildah", "mmdebstrap", "conntrack")


def _log(message: str) -> None:
    print(f"[kubetask node] {message}", file=sys.stderr, flush=True)


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True)


def unavailable() -> str | None:
    """Why a real node cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the real node needs root (network namespaces, a bridge, iptables, mounts, cgroups)"
    missing = [tool for tool in ("containerd", "ctr", "runc", "socat", "iptables", "ip", "buildah", "mmdebstrap")
               if shutil.which(tool) is None]
    missing += [f"CNI plugin {p}" for p in ("bridge", "host-local", "loopback") if not (CNI_BIN_DIR / p).exists()]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install {' '.join(APT_PACKAGES)})"
    if shutil.which("go") is None:
        return "Go is needed to build the kubelet, kube-proxy, CoreDNS and the pause image"
    for controller in ("cpu", "memory", "pids", "cpuset"):
        if not pathlib.Path(f"/sys/fs/cgroup/{controller}").is_dir() and not pathlib.Path(
                "/sys/fs/cgroup/cgroup.controllers").exists():
            return f"cgroup controller {controller} is not mounted"
    if not pathlib.Path("/proc/sys/net/bridge").is_dir():
        return "the kernel has no bridge netfilter (br_netfilter): Services could not reach pods on the bridge"
    probe = _run("runc", "--version", check=False)
    if probe.returncode != 0:
        return f"runc does not run: {probe.stderr.strip()}"
    if _link_exists(BRIDGE):
        owner = pathlib.Path("/run/kubetask-node/owner")
        where = f" (from {owner.read_text().strip()})" if owner.exists() else ""
        return (f"another real node is running{where}: network device {BRIDGE} exists; "
                "`make node-down` stops a `make node`")
    return None


def _link_exists(name: str) -> bool:
    return pathlib.Path(f"/sys/class/net/{name}").exists()


def _sysctl_path(key: str) -> pathlib.Path:
    return pathlib.Path("/proc/sys") / key


def _read_sysctl(key: str) -> str | None:
    try:
        return _sysctl_path(key).read_text().strip()
    except OSError:
        return None


def _write_sysctl(key: str, value: str) -> None:
    try:
        _sysctl_path(key).write_text(value + "\n")
    except OSError as err:
        _log(f"could not set {key}={value}: {err}")


# -- the network -----------------------------------------------------------------------


def network_up(state: pathlib.Path) -> None:
    """The bridge with the host's address on it, the sysctls, and our FORWARD filter."""
    state.mkdir(parents=True, exist_ok=True)
    host_file = state / "host.json"
    if not host_file.exists():
        before = {
            "sysctls": {key: _read_sysctl(key) for key in SYSCTLS_TOUCHED},
            "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
            # KUBE-* chains someone else made (another cluster on this host) are not ours to remove.
            "chains": sorted(_chains()),
        }
        host_file.write_text(json.dumps(before))
    marker = pathlib.Path("/run/kubetask-node")
    marker.mkdir(exist_ok=True)
    (marker / "owner").write_text(str(state))
    if not _link_exists(BRIDGE):
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
    addrs = _run("ip", "-o", "-4", "addr", "show", "dev", BRIDGE).stdout
    if f" {BRIDGE_IP}/" not in addrs:
        _run("ip", "addr", "add", f"{BRIDGE_IP}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    for key, value in SYSCTLS_NEEDED.items():
        _write_sysctl(key, value)
    # Forwarding is on for Services (a pod's packet to a ClusterIP is DNATed on the host and
    # forwarded back onto the bridge); this chain keeps it on the bridge.
    if _run("iptables", "-t", "filter", "-n", "-L", CHAIN, check=False).returncode != 0:
        _run("iptables", "-t", "filter", "-N", CHAIN)
        _run("iptables", "-t", "filter", "-A", CHAIN, "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")
        _run("iptables", "-t", "filter", "-A", CHAIN, "-i", BRIDGE, "-j", "DROP")
        _run("iptables", "-t", "filter", "-A", CHAIN, "-o", BRIDGE, "-j", "DROP")
        _run("iptables", "-t", "filter", "-I", "FORWARD", "1", "-j", CHAIN)


def forward(state: pathlib.Path, name: str, port: int) -> None:
    """Expose 127.0.0.1:``port`` to pods at ``BRIDGE_IP:port``."""
    controlplane._spawn(state, f"forward-{name}", [
        "socat", f"TCP-LISTEN:{port},bind={BRIDGE_IP},reuseaddr,fork", f"TCP:127.0.0.1:{port}",
    ])
    _wait(lambda: _connects(BRIDGE_IP, port), 10, f"the {name} forwarder on {BRIDGE_IP}:{port}", state)


def _connects(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def _wait(predicate: Any, timeout: float, what: str, state: pathlib.Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if state is not None:
            controlplane._check_alive(state)
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    hint = f"; see {state / 'logs'}" if state is not None else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}){hint}")


# -- the node ---------------------------------------------------------------------------


@dataclasses.dataclass
class Node:
    """A running real node; ``state`` holds its configuration, logs and data."""

    state: pathlib.Path
    plane: controlplane.ControlPlane
    images: image_builds.NodeImages

    @property
    def containerd_socket(self) -> pathlib.Path:
        return self.state / "containerd" / "containerd.sock"

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args, check=check)

    @classmethod
    def start(cls, state: pathlib.Path, plane: controlplane.ControlPlane, node_images: image_builds.NodeImages,
              extra_forwards: dict[str, int] | None = None) -> "Node":
        """Network, containerd, kubelet, kube-proxy, CoreDNS; on failure undo everything and re-raise."""
        try:
            return cls._start(state, plane, node_images, extra_forwards or {})
        except BaseException:
            stop(state)
            raise

    @classmethod
    def _start(cls, state: pathlib.Path, plane: controlplane.ControlPlane, node_images: image_builds.NodeImages,
               extra_forwards: dict[str, int]) -> "Node":
        started = time.monotonic()
        bins = binaries.ensure_node()
        state.mkdir(parents=True, exist_ok=True)
        (state / "logs").mkdir(exist_ok=True)
        network_up(state)
        node = cls(state=state, plane=plane, images=node_images)
        forward(state, "apiserver", plane.ports["apiserver"])
        for name, port in extra_forwards.items():
            forward(state, name, port)
        node._start_containerd()
        node._write_cni()
        node._start_kubelet(bins.kubelet)
        node._start_kube_proxy(bins.kube_proxy)
        node._start_coredns()
        _log(f"node {NODE_NAME} ready in {time.monotonic() - started:.1f}s (state in {state})")
        return node

    # containerd ---------------------------------------------------------------------

    def _start_containerd(self) -> None:
        root = self.state / "containerd"
        root.mkdir(exist_ok=True)
        config = root / "config.toml"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config.write_text("\n".join([
            "version = 2",
            f'root = "{root / "root"}"',
            f'state = "{root / "state"}"',
            # Plugins that would touch /opt or need other file systems.
            'disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",'
            ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",'
            ' "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]',
            "[grpc]",
            f'  address = "{self.containerd_socket}"',
            "[ttrpc]",
            f'  address = "{root / "containerd.ttrpc.sock"}"',
            "[debug]",
            '  address = ""',
            "[metrics]",
            '  address = ""',
            f"[{cri}]",
            # The local pause image: containerd never pulls a sandbox image.
            f'  sandbox_image = "{self.images.pause}"',
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            "  enable_selinux = false",
            # Root here may not lower oom_score_adj (no CAP_SYS_RESOURCE over its parent's value):
            # containerd clamps each container's value to its own instead of failing the container.
            "  restrict_oom_score_adj = true",
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            f"[{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"[{cri}.containerd.runtimes.runc.options]",
            # cgroup v1 with the cgroupfs driver, as the kubelet's cgroupDriver says.
            "  SystemdCgroup = false",
            f'  BinaryName = "{shutil.which("runc")}"',
            f"[{cri}.cni]",
            f'  bin_dir = "{CNI_BIN_DIR}"',
            f'  conf_dir = "{self.state / "cni" / "net.d"}"',
            "  max_conf_num = 1",
            "",
        ]))
        controlplane._spawn(self.state, "containerd", ["containerd", "--config", str(config)])
        _wait(lambda: self.ctr("version", check=False).returncode == 0, 30, "containerd", self.state)
        for image in self.images.all():
            self.ctr("images", "import", str(image_builds.archive(image)))
        have = self.ctr("images", "ls", "-q").stdout.split()
        lost = [i for i in self.images.all() if i not in have]
        if lost:
            raise RuntimeError(f"images not in containerd after import: {lost} (have {have})")

    def _write_cni(self) -> None:
        net_d = self.state / "cni" / "net.d"
        net_d.mkdir(parents=True, exist_ok=True)
        (net_d / "10-kubetask.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0",
            "name": "kubetask",
            "plugins": [{
                "type": "bridge", "bridge": BRIDGE, "isGateway": True, "isDefaultGateway": False,
                "ipMasq": False, "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": BRIDGE_IP}]],
                    # The pod subnet is on-link; Services go through the host (kube-proxy). Nothing else.
                    "routes": [{"dst": SERVICE_CIDR}],
                    "dataDir": str(self.state / "cni" / "ipam"),
                },
            }],
        }, indent=2))

    # kubelet ------------------------------------------------------------------------

    def _kubeconfig(self, name: str, subject: str) -> pathlib.Path:
        pki = self.state / "pki"
        pki.mkdir(exist_ok=True)
        for file in ("ca.crt", "ca.key"):
            shutil.copy(self.plane.state_dir / "pki" / file, pki / file)
        cert, key = controlplane.client_certificate(pki, name, subject)
        (pki / "ca.key").unlink()
        path = self.state / f"{name}.kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "kubetask-dev", "cluster": {"server": self.plane.server,
                                                             "certificate-authority": str(pki / "ca.crt")}}],
            "users": [{"name": name, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
            "contexts": [{"name": "kubetask-dev", "context": {"cluster": "kubetask-dev", "user": name}}],
            "current-context": "kubetask-dev",
        }, indent=2))
        return path

    def _start_kubelet(self, kubelet: pathlib.Path) -> None:
        _make_cgroups()
        kubeconfig = self._kubeconfig("kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}")
        root = self.state / "kubelet"
        root.mkdir(exist_ok=True)
        config = self.state / "kubelet-config.json"
        config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": BRIDGE_IP,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 0,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.state / "pki" / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            # cgroup v1 is deprecated in the kubelet, not gone: this machine has only v1 controllers.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": True,
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "enforceNodeAllocatable": ["pods"],
            # The machine has no swap, so the kubelet's check passes; pods never get any.
            "failSwapOn": True,
            "memorySwap": {"swapBehavior": "NoSwap"},
            # The kubelet sets vm.overcommit_memory, kernel.panic …; stop() puts them back.
            "protectKernelDefaults": False,
            "clusterDNS": [DNS_IP],
            "clusterDomain": "cluster.local",
            # Pods never inherit the host's resolvers: cluster DNS or nothing.
            "resolvConf": "",
            "podCIDR": POD_CIDR,
            "podLogsDir": str(self.state / "pod-logs"),
            "registerNode": True,
            "rotateCertificates": False,
            "serializeImagePulls": False,
            # Images cannot be pulled again here: never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            # A shared development disk: evict only when it is really full.
            "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%",
                             "imagefs.available": "2%", "nodefs.inodesFree": "2%"},
            "maxPods": 60,
            "shutdownGracePeriod": "0s",
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "60s",
            "logging": {"format": "text"},
        }, indent=2))
        controlplane._spawn(self.state, "kubelet", [
            str(kubelet), f"--config={config}", f"--kubeconfig={kubeconfig}", f"--root-dir={root}",
            f"--cert-dir={root / 'pki'}", f"--hostname-override={NODE_NAME}", f"--node-ip={BRIDGE_IP}",
            f"--node-labels=kubetask.io/node=real,type=real", "--v=1",
        ])
        _wait(self._ready, 120, f"node {NODE_NAME} Ready", self.state)

    def _ready(self) -> bool:
        code, body = self.plane.request(f"/api/v1/nodes/{NODE_NAME}")
        if code != 200:
            return False
        return any(c["type"] == "Ready" and c["status"] == "True" for c in body["status"].get("conditions", []))

    # kube-proxy ---------------------------------------------------------------------

    def _start_kube_proxy(self, kube_proxy: pathlib.Path) -> None:
        kubeconfig = self._kubeconfig("kube-proxy", "/CN=system:kube-proxy")
        config = self.state / "kube-proxy-config.json"
        config.write_text(json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "bindAddress": BRIDGE_IP,
            "healthzBindAddress": f"127.0.0.1:{postgres.free_port()}",
            "metricsBindAddress": f"127.0.0.1:{postgres.free_port()}",
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "detectLocalMode": "ClusterCIDR",
            # NodePorts only on the bridge, never on the host's own networks or on 127.0.0.1.
            "nodePortAddresses": [POD_CIDR],
            "iptables": {"masqueradeAll": False, "localhostNodePorts": False, "syncPeriod": "30s",
                         "minSyncPeriod": "0s"},
            # 0: leave the host's conntrack sysctls as they are.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "logging": {"format": "text"},
        }, indent=2))
        controlplane._spawn(self.state, "kube-proxy", [str(kube_proxy), f"--config={config}", "--v=1"])

        def synced() -> bool:
            rules = _run("iptables-save", "-t", "nat", check=False).stdout
            return "KUBE-SVC-" in rules and "default/kubernetes:https" in rules
        _wait(synced, 60, "kube-proxy's rules for the kubernetes Service", self.state)

    # CoreDNS ------------------------------------------------------------------------

    def _start_coredns(self) -> None:
        self.plane.kubectl("apply", "-f", "-", input=json.dumps(coredns_manifests(self.images.coredns)))
        _wait(lambda: self.plane.kubectl(
            "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=5s", check=False,
        ).returncode == 0, 120, "CoreDNS rolled out", self.state)


def coredns_manifests(image: str) -> dict[str, Any]:
    labels = {"k8s-app": "kube-dns"}
    corefile = "\n".join([
        "cluster.local:1053 in-addr.arpa:1053 ip6.arpa:1053 {",
        "    errors",
        "    health :8080",
        "    ready :8181",
        "    kubernetes cluster.local in-addr.arpa ip6.arpa {",
        "        pods insecure",
        "        ttl 30",
        "    }",
        "    cache 30",
        "}",
        "# No forwarders: nothing leaves this machine, every other name does not exist.",
        ".:1053 {",
        "    errors",
        "    template ANY ANY {",
        "        rcode NXDOMAIN",
        "    }",
        "}",
        "",
    ])
    security = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"}}
    return {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": "kube-system"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "kubetask:coredns"},
         "rules": [
             {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
              "verbs": ["list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "kubetask:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubetask:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": "kube-system"},
         "data": {"Corefile": corefile}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", "namespace": "kube-system",
                                                                     "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {
                 "serviceAccountName": "coredns", "dnsPolicy": "Default",
                 "nodeSelector": {"kubetask.io/node": "real"},
                 "containers": [{
                     "name": "coredns", "image": image, "imagePullPolicy": "Never",
                     "args": ["-conf", "/etc/coredns/Corefile"],
                     "ports": [{"name": "dns", "containerPort": 1053, "protocol": "UDP"},
                               {"name": "dns-tcp", "containerPort": 1053, "protocol": "TCP"}],
                     "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                     "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10},
                     "securityContext": security,
                     "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
                 }],
                 "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
             }}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system",
                                                             "labels": labels},
         "spec": {"clusterIP": DNS_IP, "selector": labels, "ports": [
             {"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
             {"name": "dns-tcp", "port": 53, "targetPort": 1053, "protocol": "TCP"},
         ]}},
    ]}


# -- stopping -----------------------------------------------------------------------------


def drain(plane: controlplane.ControlPlane, timeout: float = 60.0) -> None:
    """Cordon the node and delete its pods, so the kubelet stops them and CNI frees their network."""
    plane.kubectl("cordon", NODE_NAME, check=False)
    plane.kubectl("delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={NODE_NAME}",
                  "--wait=false", "--grace-period=5", check=False)

    def gone() -> bool:
        result = plane.kubectl("get", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={NODE_NAME}",
                               "-o", "name", check=False)
        return result.returncode == 0 and not result.stdout.strip()
    try:
        _wait(gone, timeout, f"the pods of {NODE_NAME} to stop")
    except TimeoutError as err:
        _log(f"{err}; stopping the rest by force")


def stop(state: pathlib.Path, plane: controlplane.ControlPlane | None = None) -> None:
    """Stop the node and undo every change it made to the host; safe to call twice."""
    if plane is not None and (state / "pids.json").exists():
        drain(plane)
    pids_file = state / "pids.json"
    pids: dict[str, int] = json.loads(pids_file.read_text()) if pids_file.exists() else {}
    for name in ("kube-proxy", "kubelet"):
        if name in pids:
            controlplane._terminate_group(pids.pop(name), 15)
    socket_path = state / "containerd" / "containerd.sock"
    if "containerd" in pids and socket_path.exists():
        _kill_containers(socket_path)
    for name in list(pids):
        controlplane._terminate_group(pids.pop(name), 15)
    if pids_file.exists():
        pids_file.unlink()
    _kill_shims(state)
    host_file = state / "host.json"
    host = json.loads(host_file.read_text()) if host_file.exists() else {"sysctls": {}, "netns": [], "chains": []}
    kube_proxy = binaries.node_bin_dir() / "kube-proxy"
    if kube_proxy.exists() and not any(c.endswith("/KUBE-SERVICES") for c in host.get("chains", [])):
        _run(str(kube_proxy), "--cleanup", "--v=0", check=False)
    _remove_chains(set(host.get("chains", [])))
    _remove_netns(set(host["netns"]))
    _remove_links()
    _unmount_under(state)
    _remove_cgroups()
    for key, value in host["sysctls"].items():
        if value is not None and _read_sysctl(key) != value:
            _write_sysctl(key, value)
    host_file.unlink(missing_ok=True)
    shutil.rmtree("/run/kubetask-node", ignore_errors=True)
    # Image layers and pod volumes are gigabytes and useless once stopped; configuration and logs stay.
    if not any(item.startswith("mount ") for item in leftovers(state)):
        for bulky in ("containerd/root", "containerd/state", "kubelet"):
            shutil.rmtree(state / bulky, ignore_errors=True)


def _kill_containers(socket_path: pathlib.Path) -> None:
    """What the drain left: kill every task in containerd's k8s.io namespace."""
    ctr = ["ctr", "--address", str(socket_path), "--namespace", "k8s.io"]
    tasks = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True, timeout=30).stdout.split()
    for task in tasks:
        subprocess.run([*ctr, "tasks", "kill", "--signal", "SIGKILL", task], capture_output=True, timeout=30)
    for task in tasks:
        subprocess.run([*ctr, "tasks", "delete", "--force", task], capture_output=True, timeout=30)


def _kill_shims(state: pathlib.Path) -> None:
    """containerd's shims run in their own sessions: find ours by the containerd address they were given."""
    address = str(state / "containerd" / "containerd.sock")
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if address.encode() in argv and argv and argv[0].endswith(b"containerd-shim-runc-v2"):
            try:
                os.killpg(int(entry.name), 9)
            except (ProcessLookupError, PermissionError):
                pass


def _chains() -> set[str]:
    """``tool/table/chain`` of every chain named like ours (KUBE-*, KUBETASK-NODE)."""
    found = set()
    for tool in IPTABLES:
        if shutil.which(tool) is None:
            continue
        for table in TABLES:
            rules = _run(f"{tool}-save", "-t", table, check=False).stdout.splitlines()
            found |= {f"{tool}/{table}/{line[1:].split()[0]}" for line in rules
                      if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES)}
    return found


def _remove_chains(before: set[str]) -> None:
    for tool in IPTABLES:
        if shutil.which(tool) is None:
            continue
        for table in TABLES:
            rules = _run(f"{tool}-save", "-t", table, check=False).stdout.splitlines()
            chains = [line[1:].split()[0] for line in rules if line.startswith(":")]
            ours = [c for c in chains if c.startswith(CHAIN_PREFIXES) and f"{tool}/{table}/{c}" not in before]
            if not ours:
                continue
            builtin = [c for c in chains if c not in ours and c.isupper() and not c.startswith(CHAIN_PREFIXES)]
            for line in rules:
                if line.startswith("-A ") and any(f"-j {c}" in line or f"-g {c}" in line for c in ours):
                    parts = line.split()
                    if parts[1] in builtin:
                        _run(tool, "-t", table, "-D", *parts[1:], check=False)
            for chain in ours:
                _run(tool, "-t", table, "-F", chain, check=False)
            for chain in ours:
                _run(tool, "-t", table, "-X", chain, check=False)


def _remove_netns(before: set[str]) -> None:
    """Pod network namespaces containerd made (``cni-…``) that the drain left; their veths go with them."""
    netns_dir = pathlib.Path("/run/netns")
    if not netns_dir.is_dir():
        return
    for entry in netns_dir.iterdir():
        if entry.name.startswith("cni-") and entry.name not in before:
            _run("umount", "-l", str(entry), check=False)
            entry.unlink(missing_ok=True)


def _remove_links() -> None:
    if not _link_exists(BRIDGE):
        return
    for port in pathlib.Path(f"/sys/class/net/{BRIDGE}/brif").iterdir():
        _run("ip", "link", "delete", port.name, check=False)
    _run("ip", "link", "delete", BRIDGE, check=False)


def _unmount_under(state: pathlib.Path) -> None:
    resolved = str(state.resolve())
    for _ in range(3):
        mounts = [line.split()[1] for line in pathlib.Path("/proc/self/mounts").read_text().splitlines()]
        mounts = [m.encode().decode("unicode_escape") for m in mounts]
        ours = sorted((m for m in mounts if m == resolved or m.startswith(resolved + "/")), key=len, reverse=True)
        if not ours:
            return
        for mount in ours:
            _run("umount", "-l", mount, check=False)


def _make_cgroups() -> None:
    """The kubelet's cgroupRoot must exist in every controller's hierarchy before it starts."""
    for controller in pathlib.Path("/sys/fs/cgroup").iterdir():
        if not controller.is_dir() or controller.name == "unified" or not (controller / "cgroup.procs").exists():
            continue
        top = controller / CGROUP_ROOT
        top.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):  # an empty cpuset admits no process
            if (top / knob).exists() and not (top / knob).read_text().strip():
                (top / knob).write_text((controller / knob).read_text())


def _remove_cgroups() -> None:
    base = pathlib.Path("/sys/fs/cgroup")
    for controller in base.iterdir():
        top = controller / CGROUP_ROOT
        if not top.is_dir():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                directory.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
        except OSError as err:
            _log(f"could not remove cgroup {top}: {err}")


def leftovers(state: pathlib.Path) -> list[str]:
    """What of the node is still on the host: empty after a clean ``stop``."""
    found: list[str] = []
    if _link_exists(BRIDGE):
        found.append(f"network device {BRIDGE}")
    found += [f"veth {p.name}" for p in pathlib.Path("/sys/class/net").iterdir()
              if p.name.startswith("veth") and (p / "master").exists() and (p / "master").resolve().name == BRIDGE]
    for tool in IPTABLES:
        for table in TABLES:
            rules = _run(f"{tool}-save", "-t", table, check=False).stdout
            found += [f"{tool} {table} chain {line[1:].split()[0]}" for line in rules.splitlines()
                      if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES)]
    resolved = str(state.resolve())
    found += [f"mount {line.split()[1]}" for line in pathlib.Path("/proc/self/mounts").read_text().splitlines()
              if line.split()[1].startswith(resolved)]
    address = str(state / "containerd" / "containerd.sock").encode()
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if address in cmdline or str(state.resolve()).encode() in cmdline:
                command = cmdline.replace(b"\0", b" ").decode(errors="replace")[:120]
                found.append(f"process {entry.name}: {command}")
    found += [f"cgroup {c / CGROUP_ROOT}" for c in pathlib.Path("/sys/fs/cgroup").iterdir() if (c / CGROUP_ROOT).is_dir()]
    return found
