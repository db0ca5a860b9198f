"""The VM's image: a root disk, Debian's kernel and its initrd, built with no registry and cached.

Each layer is cached on its own, so a change rebuilds only what follows it:

1. a bookworm rootfs tarball (mmdebstrap, ``images.debian_rootfs``) with Debian's kernel from
   bookworm-security; its postinst runs depmod and makes the initrd with initramfs-tools. virtio_blk
   and ext4 are modules, so a setup hook configures that first: ``MODULES=list`` and a hook that
   force-loads virtio_pci, virtio_blk and ext4, which keeps the initrd at ~6 MB (quick to unpack
   under TCG). After the initrd, nothing loads modules by device: guest_init.sh loads the rest;
2. containerd 2.x (containerd, ctr, containerd-shim-runc-v2) from the Go module proxy, as kind's
   node images run it (Debian's runc runs the containers);
3. wheels of the project's runtime and test dependencies (its pyproject.toml), downloaded on this
   host for the guest's CPython 3.11, since the guest has no network;
4. the disk: the tarball unpacked, the binaries, guest_init.sh and a venv added (made in a chroot by
   the guest's own python, from the wheels), then ``mkfs.ext4 -d``: no loop mount. Its directory
   is named by a digest of every input, so an unchanged image is found, not rebuilt.

The project itself is not in the image: ``vm run`` callers install its wheels from the share.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .. import settings
from ..images import debian_rootfs
from ..kind.images import _go_install
from ..util import ClusterError, log, require_tools, run

#: Newest containerd 2.x on the Go module proxy that builds with Go 1.26 (pinned 2026-12-06).
CONTAINERD_VERSION = "v2.4.2"
CONTAINERD_MODULE = "github.com/containerd/containerd/v2"

GUEST_VENV = "/opt/pytest-chaos/venv"
GUEST_SHARE = "/mnt/share"
GUEST_INIT = "/usr/local/sbin/pytest-chaos-init"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
GUEST_PYTHON = "3.11"  # bookworm's python3

#: The guest's Debian packages; busybox-static for the tests' container rootfses.
PACKAGES = ("linux-image-amd64", "initramfs-tools", "kmod", "python3", "python3-venv", "iproute2", "iptables",
            "procps", "util-linux", "stress-ng", "runc", "busybox-static", "iputils-ping")
#: Test dependencies from the project's ``dev`` extra that the guest's venv gets too.
TEST_EXTRAS = ("pytest-timeout", "dnspython", "hypothesis")

#: Bumped when the steps below change what an image holds.
FORMAT = 2
GUEST_INIT_SOURCE = Path(__file__).with_name("guest_init.sh")

_INITRAMFS_CONF = "MODULES=list\nCOMPRESS=gzip\n"
_INITRAMFS_HOOK = """#!/bin/sh
# pytest-chaos VM: MODULES=list, and the root disk is ext4 on virtio-blk: load just those.
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
for m in virtio_pci virtio_blk ext4; do force_load "$m"; done
"""
_DOCS = ("man", "doc", "info", "locale")


@dataclass(frozen=True)
class Image:
    """A built VM image: boot ``kernel`` with ``initrd`` on ``disk`` (never written: qemu's snapshot=on)."""

    dir: Path
    kernel: Path
    initrd: Path
    disk: Path
    info: dict[str, object]

    @classmethod
    def load(cls, path: Path) -> Image:
        return cls(path, path / "vmlinuz", path / "initrd.img", path / "rootfs.ext4",
                   json.loads((path / "image.json").read_text()))


def _vm_cache(layout: settings.Layout) -> Path:
    return layout.cache / "vm"


def rootfs_tarball(layout: settings.Layout) -> Path:
    """The Debian part (layer 1), cached by its package list and hooks."""
    conf, hooks = "/etc/initramfs-tools/conf.d/pytest-chaos-vm", "/etc/initramfs-tools/hooks/pytest-chaos-vm"
    options = (
        *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in _DOCS),
        '--setup-hook=mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks"',
        f'--setup-hook=printf %s {shlex.quote(_INITRAMFS_CONF)} > "$1{conf}"',
        f'--setup-hook=printf %s {shlex.quote(_INITRAMFS_HOOK)} > "$1{hooks}" && chmod 755 "$1{hooks}"',
    )
    return debian_rootfs(_vm_cache(layout), "rootfs", PACKAGES, variant="minbase",
                         sources=(f"deb {_security_mirror()} bookworm-security main",), options=options)


def _security_mirror() -> str:
    """The security archive apt uses here (the kernel's newest build is there), else Debian's."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    blocks = sources.read_text().split("\n\n") if sources.is_file() else []
    for block in blocks:
        if "bookworm-security" in block:
            for line in block.splitlines():
                if line.startswith("URIs:"):
                    return line.split()[1]
    return "http://deb.debian.org/debian-security"


def containerd_binaries(layout: settings.Layout) -> Path:
    """containerd, ctr and containerd-shim-runc-v2 (layer 2); returns their directory."""
    m = CONTAINERD_MODULE
    return _go_install(f"containerd {CONTAINERD_VERSION}", f"{m}/cmd/containerd", CONTAINERD_VERSION, "containerd",
                       layout.cache, extra=(f"{m}/cmd/ctr", f"{m}/cmd/containerd-shim-runc-v2"),
                       ldflags=f"-s -w -X {m}/version.Version={CONTAINERD_VERSION}").parent


def requirements(repo: Path) -> tuple[str, ...]:
    """The runtime dependencies of both distributions (the plugin's pyproject.toml, the daemon's
    daemon/pyproject.toml) and TEST_EXTRAS, as they pin them."""
    projects = []
    for pyproject in (repo / "pyproject.toml", repo / "daemon" / "pyproject.toml"):
        if not pyproject.is_file():
            raise ClusterError(f"{pyproject} not found: pass --repo, a pytest-chaos checkout")
        projects.append(tomllib.loads(pyproject.read_text())["project"])
    dev = projects[0].get("optional-dependencies", {}).get("dev", [])
    extras = [r for r in dev if re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] in TEST_EXTRAS]
    return tuple(dict.fromkeys([*projects[0]["dependencies"], *projects[1]["dependencies"], *extras]))


def wheels(layout: settings.Layout, reqs: tuple[str, ...]) -> Path:
    """Wheels of ``reqs`` and their dependencies for the guest (layer 3), cached by the requirement list."""
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:12]
    out = _vm_cache(layout) / f"wheels-{key}"
    if (out / ".complete").is_file():
        return out
    log(f"pip download: wheels for CPython {GUEST_PYTHON} manylinux x86_64: {' '.join(reqs)} ...")
    t0 = time.monotonic()
    shutil.rmtree(out, ignore_errors=True)
    # The guest's glibc is 2.36; pip does not widen a --platform to older manylinux tags itself.
    platforms = [f"--platform=manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)]
    proc = run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--dest", str(out),
                "--only-binary=:all:", f"--python-version={GUEST_PYTHON}", "--implementation=cp",
                f"--abi=cp{GUEST_PYTHON.replace('.', '')}", *platforms, "--platform=manylinux2014_x86_64", *reqs],
               check=False, timeout=1200)
    if proc.returncode != 0:
        raise ClusterError(f"pip download of the guest's wheels failed (PyPI reachable? PIP_INDEX_URL?):\n"
                           f"{(proc.stdout + proc.stderr)[-3000:]}")
    (out / ".complete").write_text("\n".join(reqs) + "\n")
    log(f"pip download: {len(list(out.glob('*.whl')))} wheels in {time.monotonic() - t0:.0f}s")
    return out


def _guest_init() -> bytes:
    text = GUEST_INIT_SOURCE.read_text()
    for name, value in (("GUEST_VENV", GUEST_VENV), ("GUEST_SHARE", GUEST_SHARE)):
        text = text.replace(f"@{name}@", value)
    return text.encode()


def _key(tarball: Path, binaries: Path, wheel_dir: Path) -> str:
    h = hashlib.sha256(f"format {FORMAT}\n".encode())
    st = tarball.stat()
    h.update(f"{tarball.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    for f in sorted(binaries.iterdir()):
        h.update(f"{f.name} {f.stat().st_size} {f.stat().st_mtime_ns}\n".encode())
    for f in sorted(wheel_dir.glob("*.whl")):
        h.update(f"{f.name}\n".encode())
    h.update(_guest_init())
    return h.hexdigest()[:16]


def cached(layout: settings.Layout) -> Image | None:
    """The newest complete image in the cache, without building anything."""
    dirs = [d for d in _vm_cache(layout).glob("image-*") if (d / ".complete").is_file()]
    return Image.load(max(dirs, key=lambda d: d.stat().st_mtime)) if dirs else None


def build(layout: settings.Layout, repo: Path | None = None, force: bool = False) -> Image:
    """Build (or find) the image for the project at ``repo`` (default: this checkout)."""
    if repo is None:
        from ..cli import default_repo
        repo = default_repo()
    require_tools({"mkfs.ext4": "apt-get install e2fsprogs", "tar": "apt-get install tar",
                   "chroot": "apt-get install coreutils"})
    reqs = requirements(repo)
    tarball, binaries, wheel_dir = rootfs_tarball(layout), containerd_binaries(layout), wheels(layout, reqs)
    out = _vm_cache(layout) / f"image-{_key(tarball, binaries, wheel_dir)}"
    if (out / ".complete").is_file() and not force:
        log(f"vm image: cached in {out}")
        return Image.load(out)
    t0 = time.monotonic()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    root = tmp / "root"
    root.mkdir(parents=True)
    try:
        log(f"vm image: unpacking {tarball.name} ...")
        run(["tar", "-xpf", str(tarball), "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*"],
            timeout=600)
        release = _kernel_release(root)
        info = _customize(root, release, binaries, wheel_dir, reqs)
        shutil.copyfile(root / "boot" / f"vmlinuz-{release}", tmp / "vmlinuz")
        shutil.copyfile(root / "boot" / f"initrd.img-{release}", tmp / "initrd.img")
        _mkfs(root, tmp / "rootfs.ext4")
        shutil.rmtree(root)
        info.update(key=out.name.removeprefix("image-"), built=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    seconds=round(time.monotonic() - t0))
        (tmp / "image.json").write_text(json.dumps(info, indent=2) + "\n")
        (tmp / ".complete").write_text("")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in [*_vm_cache(layout).glob("image-*"), *_vm_cache(layout).glob("wheels-*")]:
        if old not in (out, wheel_dir):
            shutil.rmtree(old, ignore_errors=True)
    log(f"vm image: built in {time.monotonic() - t0:.0f}s: {out} (kernel {info['kernel']}, "
        f"containerd {CONTAINERD_VERSION}, {info['runc']})")
    return Image.load(out)


def _chroot(root: Path, *argv: str) -> str:
    """Run ``argv`` in the unpacked guest tree with the guest's own programs; returns stdout."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    return run(["chroot", str(root), *argv], env=env, timeout=1200).stdout


def _customize(root: Path, release: str, binaries: Path, wheel_dir: Path, reqs: tuple[str, ...]) -> dict[str, object]:
    """Add containerd, the init and the venv to the unpacked tree; returns what the image holds."""
    for f in binaries.iterdir():
        shutil.copy2(f, root / "usr/local/bin" / f.name)
    init = root / GUEST_INIT.lstrip("/")
    init.write_bytes(_guest_init())
    init.chmod(0o755)
    (root / "etc/hostname").write_text("pytest-chaos-vm\n")
    (root / "etc/resolv.conf").unlink(missing_ok=True)  # the host's, from mmdebstrap: no network here
    (root / "etc/resolv.conf").write_text("")
    with (root / "etc/hosts").open("a") as hosts:
        hosts.write("127.0.1.1\tpytest-chaos-vm\n")
    log(f"vm image: venv {GUEST_VENV} from {len(list(wheel_dir.glob('*.whl')))} wheels (guest python, chroot) ...")
    staged = root / "tmp/wheels"
    shutil.copytree(wheel_dir, staged)
    _chroot(root, "python3", "-m", "venv", GUEST_VENV)
    _chroot(root, f"{GUEST_VENV}/bin/python", "-m", "pip", "install", "--disable-pip-version-check",
            "--no-cache-dir", "--no-index", "--find-links=/tmp/wheels", *reqs)
    shutil.rmtree(staged)
    return {
        "kernel": release,
        "containerd": CONTAINERD_VERSION,
        "runc": _chroot(root, "runc", "--version").splitlines()[0],
        "python": _chroot(root, "python3", "--version").strip(),
        "venv": GUEST_VENV,
        "packages": _chroot(root, f"{GUEST_VENV}/bin/python", "-m", "pip", "list", "--format=freeze",
                            "--disable-pip-version-check").split(),
    }


def _kernel_release(root: Path) -> str:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels or not (root / "boot" / kernels[-1].name.replace("vmlinuz", "initrd.img")).is_file():
        raise ClusterError(f"the rootfs has no kernel with an initrd in /boot ({[k.name for k in kernels]}): "
                           "did linux-image-amd64's postinst fail? Delete the vm cache's rootfs.tar and rebuild")
    return kernels[-1].name.removeprefix("vmlinuz-")


def _mkfs(root: Path, disk: Path) -> None:
    """An ext4 image of ``root`` with room for the tests (sparse: free space costs nothing)."""
    used = int(run(["du", "-sb", str(root)]).stdout.split()[0])
    size = (used * 5 // 4 + (4 << 30)) >> 20 << 20
    log(f"vm image: mkfs.ext4 -d ({used >> 20} MiB used, a {size >> 20} MiB disk) ...")
    with disk.open("wb") as f:
        os.truncate(f.fileno(), size)
    run(["mkfs.ext4", "-q", "-F", "-L", "pytest-chaos", "-d", str(root), str(disk)], timeout=1200)
