"""Leftover removal for ``down``: mounts, pod containers, stray processes, directories.

The kubelet and containerd leave mounts behind when stopped abruptly (pod
volumes under the kubelet root, sandbox ``/dev/shm`` under containerd's CRI
state, container rootfs under the runtime's task dir, pinned network
namespaces). This module unmounts everything under those prefixes, deepest
first, and removes the directories the cluster owns.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import settings
from .containerd import CRI, Containerd
from .procs import kill_pids, pids_with_exe_under, shim_pids
from .util import log, run


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(prefixes: list[str]) -> list[str]:
    """Mount points (from /proc/self/mountinfo) at or below any of ``prefixes``."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if any(point == p.rstrip("/") or point.startswith(p.rstrip("/") + "/")
                   or (p.endswith("*") and point.startswith(p[:-1])) for p in prefixes):
                found.append(point)
    return found


def mount_prefixes(layout: settings.Layout, inst: Containerd) -> list[str]:
    return [str(layout.kubelet_root), str(inst.state / CRI),
            str(inst.state / "io.containerd.runtime.v2.task" / "k8s.io"), "/run/netns/cni-*"]


def unmount_all(layout: settings.Layout, inst: Containerd) -> int:
    """Unmount the cluster's leftover mounts; returns how many were unmounted."""
    count = 0
    for _ in range(5):
        points = sorted(set(mounts_under(mount_prefixes(layout, inst))), key=lambda p: -p.count("/"))
        if not points:
            break
        for point in points:
            if run(["umount", point], check=False).returncode != 0:
                run(["umount", "-l", point], check=False)
            count += 1
    left = mounts_under(mount_prefixes(layout, inst))
    if left:
        log(f"warning: could not unmount: {left}")
    return count


def kill_strays(layout: settings.Layout, inst: Containerd, container_ids: set[str] | None) -> None:
    """Kill processes still running our cached binaries, and shims of our pods' containers.

    ``container_ids=None``: every k8s.io shim of this containerd (dedicated mode).
    """
    strays = pids_with_exe_under([layout.k8s_bin, layout.etcd_bin])
    if strays:
        kill_pids(strays, "cluster")
    shims = shim_pids("k8s.io", inst.socket, container_ids)
    if shims:
        kill_pids(shims, "containerd-shim (k8s.io)")


def remove_cgroups() -> int:
    """Remove the kubelet's (now empty) ``kubepods`` cgroups in every hierarchy."""
    removed = 0
    root = Path("/sys/fs/cgroup")
    tops = [root / "kubepods"] + [d / "kubepods" for d in root.iterdir() if d.is_dir()] \
        if root.is_dir() else []
    for top in tops:
        if not top.is_dir():
            continue
        for dirpath in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                dirpath.rmdir()
                removed += 1
            except OSError:
                pass
        try:
            top.rmdir()
            removed += 1
        except OSError:
            log(f"warning: could not remove cgroup {top} (processes left in it?)")
    return removed


def remove_dirs(layout: settings.Layout, inst: Containerd, keep_data: bool,
                container_ids: set[str] | None, pod_uids: set[str]) -> None:
    """Remove the kubelet root, our pods' logs, CRI state of removed containers, etcd data.

    ``container_ids=None`` (dedicated containerd): all CRI state dirs are ours.
    Pod log dirs (``/var/log/pods/<ns>_<name>_<uid>``) go only for ``pod_uids``,
    and ``/var/log/containers`` links only when they dangle afterwards.
    """
    targets = [layout.kubelet_root]
    if not keep_data:
        targets.append(layout.etcd_data)
    for sub in ("sandboxes", "containers"):
        for base in (inst.state / CRI, inst.root / CRI):
            d = base / sub
            if d.is_dir():
                targets.extend(e for e in d.iterdir() if container_ids is None or e.name in container_ids)
    pod_logs = Path("/var/log/pods")
    if pod_logs.is_dir():
        targets.extend(e for e in pod_logs.iterdir() if e.name.rsplit("_", 1)[-1] in pod_uids)
    for t in targets:
        if t.exists() and not mounts_under([str(t)]):
            shutil.rmtree(t, ignore_errors=True)
    links = Path("/var/log/containers")
    if links.is_dir():
        for link in links.iterdir():
            if link.is_symlink() and not link.exists():
                link.unlink(missing_ok=True)
    for d in (pod_logs, links):
        try:
            d.rmdir()  # only if empty
        except OSError:
            pass
