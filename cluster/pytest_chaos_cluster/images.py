"""Container images built on this machine, with no registry.

* ``pause`` (the CRI sandbox image): one static Go binary (see build.py) that
  sleeps until SIGTERM/SIGINT and reaps zombies;
* ``busybox`` (``localhost/pytest-chaos/busybox:1``): the target image for test
  workloads, a busybox-static rootfs with ``/bin/sh``, ``sleep``, ``ps`` and every
  other applet linked;
* the daemon image (``localhost/pytest-chaos/daemon:dev``): built by Docker
  Engine from the project's ``daemon/Dockerfile`` on a base image imported from
  an mmdebstrap'd Debian bookworm rootfs.

The first two are written by hand (``Rootfs``), and packed as OCI image-layout
tarballs (``oci-layout``, ``index.json`` whose manifest descriptor carries
``io.containerd.image.name``, and ``blobs/sha256/`` with the manifest, the
config and one uncompressed layer tar) for a node image's containerd, or as a
plain layer for ``docker import``. Tarballs are deterministic (fixed mtimes,
sorted entries), so an unchanged image has an unchanged digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import settings
from .util import ClusterError, log, require_tools, run

NAMESPACE = "k8s.io"
_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Rootfs:
    """An in-memory description of a small image filesystem."""

    dirs: dict[str, int] = field(default_factory=dict)              # path -> mode
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # path -> (data, mode)
    symlinks: dict[str, str] = field(default_factory=dict)          # path -> target

    def layer_tar(self) -> bytes:
        """A deterministic uncompressed tar of this rootfs."""
        buf = io.BytesIO()
        entries: dict[str, tarfile.TarInfo] = {}
        data: dict[str, bytes] = {}
        for path, mode in self.dirs.items():
            ti = tarfile.TarInfo(path.strip("/"))
            ti.type, ti.mode = tarfile.DIRTYPE, mode
            entries[ti.name] = ti
        for path, (content, mode) in self.files.items():
            ti = tarfile.TarInfo(path.strip("/"))
            ti.size, ti.mode = len(content), mode
            entries[ti.name], data[ti.name] = ti, content
        for path, target in self.symlinks.items():
            ti = tarfile.TarInfo(path.strip("/"))
            ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, target, 0o777
            entries[ti.name] = ti
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(entries):
                ti = entries[name]
                ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "root", "root"
                tar.addfile(ti, io.BytesIO(data[name]) if name in data else None)
        return buf.getvalue()


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def oci_layout_tar(name: str, rootfs: Rootfs, entrypoint: list[str], cmd: list[str] | None = None,
                   out: Path | None = None) -> tuple[bytes, str]:
    """Build an OCI image-layout tarball; returns (tar bytes, manifest digest)."""
    layer = rootfs.layer_tar()
    layer_digest = _digest(layer)
    image_config: dict[str, object] = {"Env": [_PATH_ENV], "Entrypoint": entrypoint, "WorkingDir": "/"}
    if cmd is not None:
        image_config["Cmd"] = cmd
    config = {
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "pytest-chaos-cluster"}],
    }
    config_blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _digest(config_blob), "size": len(config_blob)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer)}],
    }
    manifest_blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest = _digest(manifest_blob)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": len(manifest_blob),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
        }],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True).encode(),
        f"blobs/sha256/{layer_digest[7:]}": layer,
        f"blobs/sha256/{_digest(config_blob)[7:]}": config_blob,
        f"blobs/sha256/{manifest_digest[7:]}": manifest_blob,
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("blobs", "blobs/sha256"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(ti)
        for fname, content in files.items():
            ti = tarfile.TarInfo(fname)
            ti.size, ti.mode = len(content), 0o644
            tar.addfile(ti, io.BytesIO(content))
    blob = buf.getvalue()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(blob)
    return blob, manifest_digest


def busybox_path() -> Path:
    """The static busybox binary from Debian's busybox-static package."""
    for cand in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if cand.is_file() and is_static_elf(cand):
            return cand
    raise ClusterError("a static /bin/busybox is needed: apt-get install busybox-static")


def is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF64 executable without a PT_INTERP (dynamic loader)."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff = int.from_bytes(head[32:40], "little")
        phentsize = int.from_bytes(head[54:56], "little")
        phnum = int.from_bytes(head[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(int.from_bytes(table[i * phentsize:i * phentsize + 4], "little") != 3
               for i in range(phnum))


def busybox_rootfs() -> Rootfs:
    """busybox-static with every applet linked under /bin, plus a minimal /etc."""
    bb = busybox_path()
    applets = run([str(bb), "--list-full"]).stdout.split()
    fs = Rootfs()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "root", "var"):
        fs.dirs[d] = 0o755
    fs.dirs["tmp"] = 0o1777
    fs.files["bin/busybox"] = (bb.read_bytes(), 0o755)
    for applet in applets:
        if applet.strip("/") != "bin/busybox":
            fs.symlinks[applet.strip("/")] = "/bin/busybox"
    passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
    fs.files["etc/passwd"] = (passwd, 0o644)
    fs.files["etc/group"] = (b"root:x:0:\nnogroup:x:65534:\n", 0o644)
    return fs


def pause_rootfs(pause_binary: Path) -> Rootfs:
    """Just /pause."""
    fs = Rootfs()
    fs.files["pause"] = (pause_binary.read_bytes(), 0o755)
    for d in ("dev", "proc", "sys", "etc"):
        fs.dirs[d] = 0o755
    return fs


# --- the daemon image (Docker Engine) ------------------------------------------------

DEBIAN_BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "util-linux", "procps",
                        "iproute2", "iptables", "ca-certificates", "stress-ng")


def debian_mirror() -> str:
    """The Debian mirror apt uses here (from /etc/apt/sources.list.d/debian.sources)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for block in sources.read_text().split("\n\n"):
            if "bookworm" in block and "security" not in block:
                for line in block.splitlines():
                    if line.startswith("URIs:"):
                        return line.split()[1]
    lst = Path("/etc/apt/sources.list")
    if lst.is_file():
        for line in lst.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in line:
                return parts[1] if not parts[1].startswith("[") else parts[2]
    raise ClusterError(
        "found no Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list; "
        "mmdebstrap needs the one apt uses"
    )


def debian_rootfs(cache: Path, name: str, packages: tuple[str, ...], variant: str = "minbase",
                  sources: tuple[str, ...] = (), options: tuple[str, ...] = ()) -> Path:
    """A bookworm rootfs tarball from mmdebstrap (``variant`` plus ``packages``), cached by its package list.

    ``sources`` are more apt source lines (``deb URI SUITE main``) besides the mirror's bookworm,
    ``options`` more mmdebstrap options (hooks); both are part of the cache key.
    """
    out = cache / f"{name}.tar"
    stamp = out.with_suffix(".packages")
    want = " ".join(packages) if variant == "apt" else f"{variant}: {' '.join(packages)}"
    if sources or options:
        want += "\n" + "\n".join((*sources, *options))
    if out.is_file() and stamp.is_file() and stamp.read_text() == want:
        return out
    require_tools({"mmdebstrap": "apt-get install mmdebstrap"})
    cache.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    log(f"mmdebstrap: a bookworm rootfs for {name} ({' '.join(packages)}) from {mirror} ...")
    t0 = time.monotonic()
    tmp = out.with_suffix(".tmp.tar")
    run(["mmdebstrap", f"--variant={variant}", f"--include={','.join(packages)}",
         "--aptopt=Acquire::Retries \"3\"", *options, "bookworm", str(tmp), mirror, *sources], timeout=1800)
    tmp.replace(out)
    stamp.write_text(want)
    log(f"mmdebstrap: {name} done in {time.monotonic() - t0:.0f}s ({out.stat().st_size >> 20} MiB)")
    return out


def ensure_debian_rootfs(cache: Path) -> Path:
    """The daemon image's base: bookworm with python3 & friends (cached)."""
    return debian_rootfs(cache, "debian-bookworm-python", DEBIAN_BASE_PACKAGES, variant="apt")


def _build_context(repo: Path, dest: Path) -> None:
    """Copy the repository's files (tracked + untracked-not-ignored) into ``dest``.

    Keeps .git, virtualenvs and caches out of the Docker build context.
    """
    proc = run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
                "--exclude-standard"], check=False)
    if proc.returncode == 0:
        names = [n for n in proc.stdout.split("\0") if n]
    else:
        names = [str(p.relative_to(repo)) for p in repo.rglob("*")
                 if p.is_file() and ".git" not in p.parts]
    for name in names:
        src = repo / name
        # A link is copied as a link: the daemon's api/ links to the plugin's (both are in the context).
        if not (src.is_file() or src.is_symlink()) or "__pycache__" in src.parts:
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


def _pip_build_args(ctx: Path) -> list[str]:
    """Build args handing the host's pip setup to daemon/Dockerfile's build stage.

    The host may reach PyPI only through a TLS-intercepting proxy whose CA is in
    the host's bundle (PIP_CERT / REQUESTS_CA_BUNDLE / SSL_CERT_FILE): that bundle
    is copied into the build context and named by ``PIP_CA_BUNDLE``.
    """
    args = []
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT"):
        if os.environ.get(var):
            args.append(f"{var}={os.environ[var]}")
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        bundle = os.environ.get(var)
        if bundle and Path(bundle).is_file():
            break
    else:
        bundle = "/etc/ssl/certs/ca-certificates.crt"
    if Path(bundle).is_file():
        dest = ctx / ".pytest-chaos-build" / "ca-bundle.crt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle, dest)
        args.append("PIP_CA_BUNDLE=ca-bundle.crt")  # daemon/Dockerfile copies the dir's files to /deps/
    return args


def build_daemon_image(layout: settings.Layout, repo: Path, image: str = settings.DAEMON_IMAGE) -> str:
    """docker build daemon/Dockerfile on the local Debian base (a running Docker Engine); returns the image id."""
    dockerfile = repo / "daemon" / "Dockerfile"
    if not dockerfile.is_file():
        raise ClusterError(f"{dockerfile} not found (pass --repo, or --no-daemon-image)")
    rootfs_tar = ensure_debian_rootfs(layout.images_cache)
    base = settings.DAEMON_BASE_IMAGE
    stamp = layout.images_cache / "debian-bookworm-python.imported"
    marker = f"{rootfs_tar.stat().st_mtime_ns}"
    if (run(["docker", "image", "inspect", base], check=False).returncode != 0
            or not stamp.is_file() or stamp.read_text() != marker):
        log(f"docker import {rootfs_tar.name} {base}")
        run(["docker", "import", str(rootfs_tar), base], timeout=600)
        stamp.write_text(marker)
    with tempfile.TemporaryDirectory(prefix="pytest-chaos-ctx-") as ctx:
        _build_context(repo, Path(ctx))
        build_args = [f"BASE_IMAGE={base}", *_pip_build_args(Path(ctx))]
        log(f"docker build -f daemon/Dockerfile -t {image} (BASE_IMAGE={base}) ...")
        env = dict(os.environ, DOCKER_BUILDKIT="0")
        build_log = layout.logs / "daemon-image-build.log"
        build_log.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["docker", "build", "--network", "host"]
        for arg in build_args:
            cmd += ["--build-arg", arg]
        cmd += ["-f", str(Path(ctx) / "daemon" / "Dockerfile"), "-t", image, ctx]
        with build_log.open("w") as lf:
            proc = subprocess.run(cmd, env=env, stdout=lf, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            tail = "\n".join(build_log.read_text().splitlines()[-25:])
            raise ClusterError(f"docker build of {image} failed; log: {build_log}\n{tail}")
    return run(["docker", "image", "inspect", "--format", "{{.Id}}", image]).stdout.strip()
