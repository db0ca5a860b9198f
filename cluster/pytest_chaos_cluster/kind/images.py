"""The kind test bed's programs and images, built here with no registry.

* ``kind`` itself and CoreDNS, from the Go module proxy (cached by version);
* the **base image**: a Debian bookworm rootfs from mmdebstrap (systemd,
  Debian's containerd and runc, the CNI plugins, iptables ...) imported into
  Docker, plus ``node/Dockerfile``: our entrypoint, containerd's and the
  kubelet's configuration, crictl;
* the **node image**: the base with kubeadm, kubelet and kubectl in
  ``/usr/bin``, ``/kind/version``, and every image kubeadm runs already in the
  node's containerd (``k8s.io`` namespace), all under
  ``localhost/pytest-chaos/`` (the kind config points kubeadm there).

The node image is what ``kind build node-image`` makes, built by the same
steps in our own code: kind's builder fetches etcd, CoreDNS, the pause image,
kindnetd and local-path-provisioner from their registries even when a copy is
local, and imports with a ``ctr`` flag that containerd 1.6 lacks.
Each image's tag carries a digest of its inputs, so an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .. import settings
from ..build import GO_REQUIREMENT, build_etcd, build_kubernetes, build_pause, go_env
from ..images import Rootfs, busybox_rootfs, debian_rootfs, oci_layout_tar, pause_rootfs
from ..util import ClusterError, log, require_tools, run

KIND_VERSION = "v0.30.0"
COREDNS_VERSION = "v1.12.1"  # what kubeadm 1.34 deploys
IMAGE_PREFIX = "localhost/pytest-chaos"
NODE_FILES = Path(__file__).with_name("node")

#: The node's Debian packages: kind's base image's list, with Debian's containerd, runc and CNI plugins.
NODE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "containerd", "runc", "containernetworking-plugins",
                 "conntrack", "iptables", "nftables", "iproute2", "ethtool", "socat", "kmod", "util-linux",
                 "mount", "procps", "libseccomp2", "bash", "ca-certificates")
#: kube-proxy's image: what its iptables mode runs.
PROXY_PACKAGES = ("iptables", "conntrack", "kmod")


def _go_install(label: str, module: str, version: str, binary: str, cache: Path,
                extra: tuple[str, ...] = (), ldflags: str = "-s -w") -> Path:
    """``go install module@version`` into ``cache/<binary>-<version>/bin`` (once).

    ``extra`` names more commands of the same module version (``module/cmd/x``) built by the
    same invocation into the same directory, so shared packages compile once.
    """
    out = cache / f"{binary}-{version}" / "bin" / binary
    outputs = [out, *(out.parent / p.rsplit("/", 1)[-1] for p in extra)]
    if all(o.is_file() for o in outputs):
        return out
    require_tools(GO_REQUIREMENT)
    log(f"{label}: building {module}@{version} from the Go module proxy (a few minutes the first time) ...")
    t0 = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    logfile = out.parent.parent / "build.log"
    env = dict(go_env(), GOBIN=str(out.parent))
    env["GOFLAGS"] = env["GOFLAGS"].replace("-mod=mod", "").strip()  # go install pkg@version takes no -mod
    with logfile.open("w") as lf:
        proc = subprocess.run(["go", "install", "-trimpath", f"-ldflags={ldflags}",
                               *(f"{p}@{version}" for p in (module, *extra))],
                              env=env, stdout=lf, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0 or not all(o.is_file() for o in outputs):
        tail = "\n".join(logfile.read_text().splitlines()[-20:])
        raise ClusterError(f"building {module}@{version} failed; log: {logfile}\n{tail}")
    log(f"{label}: built in {time.monotonic() - t0:.0f}s")
    return out


def kind_binary(layout: settings.Layout) -> Path:
    return layout.cache / f"kind-{KIND_VERSION}" / "bin" / "kind"


def ensure_kind(layout: settings.Layout) -> Path:
    return _go_install("kind", "sigs.k8s.io/kind", KIND_VERSION, "kind", layout.cache)


def ensure_coredns(layout: settings.Layout) -> Path:
    return _go_install("coredns", "github.com/coredns/coredns", COREDNS_VERSION, "coredns", layout.cache)


def _docker_image_exists(name: str) -> bool:
    return run(["docker", "image", "inspect", name], check=False).returncode == 0


def _docker_image_id(name: str) -> str:
    return run(["docker", "image", "inspect", "--format", "{{.Id}}", name]).stdout.strip()


def _imported(tar: Path, name: str, changes: tuple[str, ...] = ()) -> str:
    """``docker import`` ``tar`` as ``name:<digest of the tar's stamp>``, once; returns the tag."""
    key = hashlib.sha256(f"{tar.stat().st_size}:{tar.stat().st_mtime_ns}:{changes}".encode()).hexdigest()[:12]
    tag = f"{name}:{key}"
    if not _docker_image_exists(tag):
        log(f"docker import {tar.name} {tag}")
        cmd = ["docker", "import"]
        for change in changes:
            cmd += ["--change", change]
        run([*cmd, str(tar), tag], timeout=900)
    return tag


def _tree_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        for f in sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()):
            h.update(f.name.encode())
            h.update(f.read_bytes() if f.stat().st_size < 1 << 20 else str(f.stat().st_mtime_ns).encode())
    return h.hexdigest()[:12]


def ensure_base_image(layout: settings.Layout) -> str:
    """The kind base image (rootfs + node/Dockerfile); returns its tag."""
    rootfs = _imported(debian_rootfs(layout.images_cache, "kind-node-rootfs", NODE_PACKAGES),
                       f"{IMAGE_PREFIX}/kind-node-rootfs", ('ENTRYPOINT ["/bin/bash"]',))
    crictl = shutil.which("crictl")
    if crictl is None:
        raise ClusterError("crictl is needed in the node image (kind load uses it): scripts/setup.sh installs it")
    tag = f"{IMAGE_PREFIX}/kind-base:{_tree_digest(NODE_FILES, Path(crictl))}-{rootfs.rsplit(':', 1)[1]}"
    if _docker_image_exists(tag):
        log(f"image {tag}: cached")
        return tag
    with tempfile.TemporaryDirectory(prefix="pytest-chaos-kind-base-") as ctx:
        shutil.copytree(NODE_FILES, ctx, dirs_exist_ok=True)
        shutil.copy2(crictl, Path(ctx) / "crictl")
        log(f"docker build {tag} (node/Dockerfile on {rootfs}) ...")
        _docker_build(layout, ["--build-arg", f"BASE={rootfs}", "-t", tag, ctx], "kind-base-build.log")
    return tag


def _docker_build(layout: settings.Layout, args: list[str], log_name: str) -> None:
    build_log = layout.logs / log_name
    build_log.parent.mkdir(parents=True, exist_ok=True)
    with build_log.open("w") as lf:
        proc = subprocess.run(["docker", "build", *args], env={**os.environ, "DOCKER_BUILDKIT": "0"},
                              stdout=lf, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "\n".join(build_log.read_text().splitlines()[-25:])
        raise ClusterError(f"docker build failed; log: {build_log}\n{tail}")


def _binary_image(binary: Path, dest: str) -> Rootfs:
    """An image of one static binary at ``dest``, with /tmp and a minimal /etc."""
    fs = Rootfs()
    for d in ("usr", "usr/local", "usr/local/bin", "etc", "dev", "proc", "sys", "var", "run"):
        fs.dirs[d] = 0o755
    fs.dirs["tmp"] = 0o1777
    fs.files[dest.strip("/")] = (binary.read_bytes(), 0o755)
    fs.files["etc/passwd"] = (b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534::/:/sbin/nologin\n",
                              0o644)
    fs.files["etc/group"] = (b"root:x:0:\nnogroup:x:65534:\n", 0o644)
    fs.files["etc/nsswitch.conf"] = (b"hosts: files dns\n", 0o644)
    return fs


def image_names(layout: settings.Layout) -> dict[str, str]:
    """The images kubeadm and our containerd config ask for, by role."""
    return {
        "kube-apiserver": f"{IMAGE_PREFIX}/kube-apiserver:{layout.k8s_version}",
        "kube-controller-manager": f"{IMAGE_PREFIX}/kube-controller-manager:{layout.k8s_version}",
        "kube-scheduler": f"{IMAGE_PREFIX}/kube-scheduler:{layout.k8s_version}",
        "kube-proxy": f"{IMAGE_PREFIX}/kube-proxy:{layout.k8s_version}",
        "etcd": f"{IMAGE_PREFIX}/etcd:{layout.etcd_version}",
        "coredns": f"{IMAGE_PREFIX}/coredns:{COREDNS_VERSION}",
        "pause": settings.PAUSE_IMAGE,
    }


def _node_image_tars(layout: settings.Layout, work: Path) -> list[Path]:
    """Write every image the node runs as a tarball in ``work``."""
    names = image_names(layout)
    k8s_bin, etcd_bin = build_kubernetes(layout), build_etcd(layout)
    tars = []
    for component in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        fs = _binary_image(k8s_bin / component, f"/usr/local/bin/{component}")
        tars.append(_write_oci(work, names[component], fs, [f"/usr/local/bin/{component}"]))
    tars.append(_write_oci(work, names["etcd"],
                           _binary_image(etcd_bin / "etcd", "/usr/local/bin/etcd"),
                           ["/usr/local/bin/etcd"]))
    tars.append(_write_oci(work, names["coredns"],
                           _binary_image(ensure_coredns(layout), "/coredns"), ["/coredns"]))
    tars.append(_write_oci(work, names["pause"], pause_rootfs(build_pause(layout)), ["/pause"]))
    # kube-proxy's iptables mode runs iptables: a small Debian with it.
    proxy_base = _imported(debian_rootfs(layout.images_cache, "kube-proxy-rootfs", PROXY_PACKAGES),
                           f"{IMAGE_PREFIX}/kube-proxy-rootfs")
    with tempfile.TemporaryDirectory(prefix="pytest-chaos-kube-proxy-") as ctx:
        shutil.copy2(k8s_bin / "kube-proxy", Path(ctx) / "kube-proxy")
        (Path(ctx) / "Dockerfile").write_text(
            f"FROM {proxy_base}\nCOPY kube-proxy /usr/local/bin/kube-proxy\n"
            'ENTRYPOINT ["/usr/local/bin/kube-proxy"]\n')
        _docker_build(layout, ["-t", names["kube-proxy"], ctx], "kube-proxy-build.log")
    proxy_tar = work / "kube-proxy.tar"
    run(["docker", "save", "-o", str(proxy_tar), names["kube-proxy"]], timeout=600)
    tars.append(proxy_tar)
    return tars


def _write_oci(work: Path, name: str, fs: Rootfs, entrypoint: list[str]) -> Path:
    out = work / (name.rsplit("/", 1)[-1].replace(":", "_") + ".oci.tar")
    oci_layout_tar(name, fs, entrypoint, None, out)
    return out


def ensure_node_image(layout: settings.Layout) -> str:
    """The kind node image for ``layout.k8s_version``; returns its tag."""
    base = ensure_base_image(layout)
    k8s_bin = build_kubernetes(layout)
    key = _tree_digest(*(k8s_bin / b for b in ("kubeadm", "kubelet", "kubectl", "kube-proxy", "kube-apiserver")),
                       build_etcd(layout) / "etcd", ensure_coredns(layout))
    tag = f"{IMAGE_PREFIX}/kind-node:{layout.k8s_version}-{key}-{base.rsplit(':', 1)[1][:12]}"
    if _docker_image_exists(tag):
        log(f"image {tag}: cached")
        return tag
    t0 = time.monotonic()
    log(f"node image {tag}: building (the images kubeadm runs, then a node with them preloaded) ...")
    with tempfile.TemporaryDirectory(prefix="pytest-chaos-kind-node-") as tmp:
        tars = _node_image_tars(layout, Path(tmp))
        builder = run(["docker", "run", "-d", "--entrypoint=sleep", "--security-opt", "seccomp=unconfined",
                       base, "infinity"]).stdout.strip()
        try:
            for binary in ("kubeadm", "kubelet", "kubectl"):
                run(["docker", "cp", str(k8s_bin / binary), f"{builder}:/usr/bin/{binary}"])
            _exec(builder, "sh", "-c", f"echo {layout.k8s_version} > /kind/version")
            # containerd without systemd, only to import into /var/lib/containerd.
            _exec(builder, "sh", "-c", "nohup containerd >/var/log/containerd-build.log 2>&1 &")
            _exec(builder, "sh", "-c", "for i in $(seq 100); do ctr version >/dev/null 2>&1 && exit 0; "
                                       "sleep 0.1; done; cat /var/log/containerd-build.log; exit 1")
            for tar in tars:
                with tar.open("rb") as f:
                    proc = subprocess.run(["docker", "exec", "-i", builder, "ctr", "--namespace=k8s.io", "images",
                                           "import", "--all-platforms", "--no-unpack", "--digests", "-"],
                                          stdin=f, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise ClusterError(f"importing {tar.name} into the node image failed: {proc.stderr.strip()}")
            listed = _exec(builder, "ctr", "--namespace=k8s.io", "images", "ls", "-q")
            missing = [n for n in image_names(layout).values() if n not in listed.split()]
            if missing:
                raise ClusterError(f"the node image lacks {', '.join(missing)} after the import")
            # Stopped cleanly (it writes its metadata out); with no init here it stays a zombie.
            _exec(builder, "sh", "-c", "pkill -x containerd; for i in $(seq 300); do "
                                       "ps -o stat= -C containerd | grep -qv Z || exit 0; sleep 0.1; done; exit 1")
            _exec(builder, "rm", "-f", "/var/log/containerd-build.log")
            run(["docker", "commit", "--change", 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]',
                 builder, tag], timeout=900)
        finally:
            run(["docker", "rm", "-f", "-v", builder], check=False)
    log(f"node image {tag}: built in {time.monotonic() - t0:.0f}s")
    return tag


def _exec(container: str, *argv: str) -> str:
    proc = run(["docker", "exec", container, *argv], check=False, timeout=300)
    if proc.returncode != 0:
        raise ClusterError(f"in the node image build container: {' '.join(argv)} failed: "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def ensure_busybox_docker_image(layout: settings.Layout) -> str:
    """The target image in Docker (for ``kind load docker-image``), from the same rootfs as the cluster's."""
    name = settings.BUSYBOX_IMAGE
    tar = layout.images_cache / "busybox-rootfs.tar"
    tar.parent.mkdir(parents=True, exist_ok=True)
    tar.write_bytes(busybox_rootfs().layer_tar())
    digest = hashlib.sha256(tar.read_bytes()).hexdigest()[:12]
    labelled = run(["docker", "image", "inspect", "--format", '{{index .Config.Labels "rootfs"}}', name],
                   check=False)
    if labelled.returncode != 0 or labelled.stdout.strip() != digest:
        run(["docker", "import", "--change", 'CMD ["/bin/sh"]', "--change", f"LABEL rootfs={digest}",
             str(tar), name])
    return name
