"""Container images for the real node, built on this machine without a registry.

No registry is reachable here, so every image a pod of the real node runs is
built locally and loaded into containerd's ``k8s.io`` namespace, and nothing
ever pulls (the chart is installed with ``pullPolicy: Never``):

* ``python``: a Debian bookworm root file system made by ``mmdebstrap`` from
  Debian's packages, with python3.11 and a virtualenv at ``/opt/python`` on
  the PATH. The venv stands in for the official ``python:3.11-slim`` image:
  there ``pip install`` installs system-wide, which Debian's own Python
  refuses (PEP 668), and the Dockerfile must stay unchanged.
* ``kubetask``: the project's own ``Dockerfile``, built by ``buildah bud``
  with ``--build-arg PYTHON_IMAGE=`` pointing at the base above. Its ``pip
  wheel`` step reaches PyPI like ``make setup`` does; the host's CA bundle is
  bind-mounted for that step only, so it never lands in the image.
* ``pause``: the sandbox image containerd starts first in every pod; a static
  Go program of ours (``pause/main.go``) in an otherwise empty image.
* ``coredns``: the CoreDNS binary of ``binaries.ensure_node()``, alone.
* ``postgres``: Debian's PostgreSQL 15 with an entrypoint of ours
  (``postgres-image/entrypoint.sh``) that honours the official image's
  contract (``POSTGRES_USER``, ``POSTGRES_PASSWORD``, ``POSTGRES_DB``,
  ``PGDATA``), so the chart's bundled-database path runs unmodified.

Each image's tag is a hash of its inputs (package lists, files, the base's
tag), so an unchanged input reuses the cached image and any change rebuilds
just what depends on it. buildah keeps its storage under
``$KUBETASK_CACHE/images``; ``docker-archive`` tarballs of each image sit
beside it for ``ctr images import``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from kubetask_dev import binaries

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
REPOSITORY = "kubetask.local"
SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# Keep images small: no documentation, manual pages or translations.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")
PYTHON_PACKAGES = ("passwd", "python3", "python3-venv", "ca-certificates")
POSTGRES_PACKAGES = ("passwd", "postgresql-15", "bash")
POSTGRES_UID = 65532  # the uid the chart's securityContext runs every container as
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PAUSE_SOURCE = HERE / "pause"
POSTGRES_ENTRYPOINT = HERE / "postgres-image" / "entrypoint.sh"


def _log(message: str) -> None:
    print(f"[kubetask images] {message}", file=sys.stderr, flush=True)


def images_root() -> pathlib.Path:
    return binaries.cache_root() / "images"


def _buildah(*args: str, capture: bool = False, cwd: pathlib.Path | None = None) -> str:
    storage = images_root() / "storage"
    cmd = ["buildah", "--root", str(storage), "--runroot", str(images_root() / "run"),
           "--storage-driver", "overlay", *args]
    result = subprocess.run(cmd, check=True, text=True, cwd=cwd,
                            stdout=subprocess.PIPE if capture else None)
    return (result.stdout or "").strip()


def _exists(image: str) -> bool:
    storage = images_root() / "storage"
    return subprocess.run(
        ["buildah", "--root", str(storage), "--runroot", str(images_root() / "run"), "--storage-driver", "overlay",
         "inspect", "--type", "image", image], capture_output=True,
    ).returncode == 0


def _work_dir(prefix: str) -> pathlib.Path:
    images_root().mkdir(parents=True, exist_ok=True)
    return pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir=images_root()))


def _digest(*parts: str | bytes | pathlib.Path) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        if isinstance(part, pathlib.Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for file in files:
                hasher.update(str(file.relative_to(part if part.is_dir() else part.parent)).encode())
                hasher.update(file.read_bytes())
        else:
            hasher.update(part if isinstance(part, bytes) else part.encode())
        hasher.update(b"\0")
    return hasher.hexdigest()[:12]


def _rootfs_image(name: str, packages: tuple[str, ...], hooks: tuple[str, ...], config: tuple[str, ...]) -> None:
    """mmdebstrap a bookworm root file system and commit it as image ``name``."""
    work = _work_dir("rootfs-")
    try:
        tarball = work / "rootfs.tar"
        cmd = ["mmdebstrap", "--mode=root", "--variant=essential", "--quiet", f"--include={','.join(packages)}"]
        cmd += [f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES]
        cmd += [f"--customize-hook={hook}" for hook in hooks]
        cmd += [SUITE, str(tarball), *MIRRORS]
        _log(f"mmdebstrap {SUITE} with {', '.join(packages)}")
        subprocess.run(cmd, check=True)
        container = _buildah("from", "--quiet", "scratch", capture=True)
        try:
            mountpoint = _buildah("mount", container, capture=True)
            subprocess.run(["tar", "-xf", str(tarball), "-C", mountpoint, "--numeric-owner"], check=True)
            _buildah("umount", container)
            _buildah("config", *config, container)
            _buildah("commit", "--quiet", "--rm", container, name)
        except BaseException:
            _buildah("rm", container)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _file_image(name: str, files: dict[str, pathlib.Path], config: tuple[str, ...]) -> None:
    """An image holding only ``files`` (destination path → local file)."""
    container = _buildah("from", "--quiet", "scratch", capture=True)
    try:
        for destination, source in files.items():
            _buildah("copy", "--quiet", "--chmod", "0755", container, str(source), destination)
        _buildah("config", *config, container)
        _buildah("commit", "--quiet", "--rm", container, name)
    except BaseException:
        _buildah("rm", container)
        raise


def python_image() -> str:
    hooks = ('chroot "$1" python3 -m venv /opt/python',)
    tag = _digest(SUITE, *MIRRORS, *PYTHON_PACKAGES, *DPKG_EXCLUDES, *hooks)
    name = f"{REPOSITORY}/python:3.11-{SUITE}-{tag}"
    if not _exists(name):
        _rootfs_image(name, PYTHON_PACKAGES, hooks, (
            "--env", f"PATH=/opt/python/bin:{PATH}", "--env", "LANG=C.UTF-8", "--cmd", "python3",
        ))
    return name


def _kubetask_inputs() -> list[pathlib.Path]:
    """What the Dockerfile copies (pyproject.toml, README.md, operator/), and the Dockerfile."""
    files = [ROOT / "Dockerfile", ROOT / "pyproject.toml", ROOT / "README.md"]
    files += sorted(p for p in (ROOT / "operator").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")
                    and ".egg-info" not in str(p))
    return files


KUBETASK_RECIPE = "2"
"""Part of the kubetask image's tag: bump it when the way the image is built changes, so tags built the old
way are not reused (recipe 1 used buildah's layer cache, which once served an image of older code)."""


def _packaged_modules(image: str) -> set[str]:
    """The kubetask modules installed in ``image``, as paths relative to the package."""
    container = _buildah("from", "--pull-never", image, capture=True)
    try:
        mount = pathlib.Path(_buildah("mount", container, capture=True))
        return {str(p.relative_to(package)) for package in mount.glob("opt/python/lib/python3*/site-packages/kubetask")
                for p in package.rglob("*.py")}
    finally:
        _buildah("rm", container, capture=True)


def _check_packaged(image: str) -> None:
    """Fail, naming the difference, unless ``image`` installs exactly the tree's modules."""
    tree = {str(p.relative_to(ROOT / "operator" / "kubetask")) for p in (ROOT / "operator" / "kubetask").rglob("*.py")}
    packaged = _packaged_modules(image)
    if packaged != tree:
        raise RuntimeError(
            f"image {image} does not hold the tree's code: missing {sorted(tree - packaged)[:5]}, extra "
            f"{sorted(packaged - tree)[:5]}; remove it (buildah --root {images_root() / 'storage'} rmi {image}) "
            "and build again")


def kubetask_image() -> str:
    base = python_image()
    hasher = hashlib.sha256(base.encode() + b"\0" + KUBETASK_RECIPE.encode())
    for file in _kubetask_inputs():
        hasher.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    name = f"{REPOSITORY}/kubetask:0.1.0-{hasher.hexdigest()[:12]}"
    if not _exists(name):
        _log(f"buildah bud Dockerfile --build-arg PYTHON_IMAGE={base}")
        _buildah(
            # No --layers: buildah's layer cache keys the final stage's `RUN --mount=from=build` on the
            # command alone, not on the mounted wheels, so it served an image of older code once. The
            # name above already skips the build when no input changed.
            "bud", "--quiet", "--pull=never", "--isolation", "chroot", "--network", "host",
            # The host's CA bundle, for the pip step only (the machine may reach PyPI through a TLS proxy).
            "-v", "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
            "--build-arg", f"PYTHON_IMAGE={base}", "-t", name, "-f", str(ROOT / "Dockerfile"), str(ROOT),
            cwd=ROOT,
        )
        _check_packaged(name)
    return name


def pause_image() -> str:
    name = f"{REPOSITORY}/pause:{_digest(PAUSE_SOURCE)}"
    if _exists(name):
        return name
    work = _work_dir("pause-")
    try:
        env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"}
        subprocess.run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(work / "pause"), "."],
                       cwd=PAUSE_SOURCE, env=env, check=True)
        _file_image(name, {"/pause": work / "pause"}, ("--entrypoint", '["/pause"]', "--user", "65535:65535"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return name


def coredns_image(coredns: pathlib.Path) -> str:
    name = f"{REPOSITORY}/coredns:{binaries.COREDNS_VERSION}-{_digest(coredns)}"
    if not _exists(name):
        _file_image(name, {"/coredns": coredns}, ("--entrypoint", '["/coredns"]', "--user", "65532:65532"))
    return name


def postgres_image() -> str:
    hooks = (
        # The chart runs every container as uid 65532; initdb wants a passwd entry for its uid.
        f'chroot "$1" useradd --system --uid {POSTGRES_UID} --user-group --home-dir /var/lib/postgresql '
        '--no-create-home --shell /usr/sbin/nologin pgdata',
        # The package creates a cluster of its own; the entrypoint makes the one PGDATA names.
        'rm -rf "$1/var/lib/postgresql/15" "$1/etc/postgresql/15"',
        f'mkdir -p "$1/var/lib/postgresql/data" && chown {POSTGRES_UID}:{POSTGRES_UID} "$1/var/lib/postgresql/data"',
        f'cp {POSTGRES_ENTRYPOINT} "$1/usr/local/bin/docker-entrypoint.sh" && chmod 0755 "$1/usr/local/bin/docker-entrypoint.sh"',
    )
    # The entrypoint counts by its content, not by where this checkout keeps it.
    tag = _digest(SUITE, *MIRRORS, *POSTGRES_PACKAGES, *DPKG_EXCLUDES,
                  *(hook.replace(str(POSTGRES_ENTRYPOINT), "entrypoint.sh") for hook in hooks), POSTGRES_ENTRYPOINT)
    name = f"{REPOSITORY}/postgres:15-{SUITE}-{tag}"
    if not _exists(name):
        _rootfs_image(name, POSTGRES_PACKAGES, hooks, (
            "--env", f"PATH=/usr/lib/postgresql/15/bin:{PATH}", "--env", "PGDATA=/var/lib/postgresql/data",
            "--env", "LANG=C.UTF-8", "--entrypoint", '["docker-entrypoint.sh"]', "--cmd", "postgres",
            "--stop-signal", "SIGINT", "--user", f"{POSTGRES_UID}:{POSTGRES_UID}", "--port", "5432",
        ))
    return name


def archive(image: str) -> pathlib.Path:
    """A docker-archive tarball of ``image`` for ``ctr images import``, cached beside the storage."""
    path = images_root() / "archives" / (image.replace("/", "_").replace(":", "_") + ".tar")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        _buildah("push", "--quiet", image, f"docker-archive:{partial}:{image}")
        partial.rename(path)
    return path


@dataclasses.dataclass(frozen=True)
class NodeImages:
    kubetask: str
    pause: str
    coredns: str
    postgres: str

    def all(self) -> list[str]:
        return [self.pause, self.coredns, self.kubetask, self.postgres]


def ensure(coredns: pathlib.Path) -> NodeImages:
    """Every image the real node runs, built where the cache lacks it."""
    images_root().mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = NodeImages(kubetask=kubetask_image(), pause=pause_image(), coredns=coredns_image(coredns),
                        postgres=postgres_image())
    for image in result.all():
        archive(image)
    _log(f"images ready in {time.monotonic() - started:.0f}s: {', '.join(result.all())}")
    return result


def split(image: str) -> tuple[str, str]:
    """``repository:tag`` → (repository, tag), for the chart's image values."""
    repository, _, tag = image.rpartition(":")
    return repository, tag
