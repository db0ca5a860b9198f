"""Reading what the kernel says about a process in /proc: ids, capabilities,
namespaces, cgroups, start time. Nothing here executes anything."""

from __future__ import annotations

import dataclasses
import os
import re

PF_KTHREAD = 0x00200000  # task flag of kernel threads (include/linux/sched.h)


@dataclasses.dataclass(frozen=True)
class Stat:
    """Fields of /proc/PID/stat this daemon needs."""

    comm: str
    state: str
    ppid: int
    flags: int
    utime_ticks: int
    stime_ticks: int
    start_ticks: int  # since boot: with the PID, a process's identity
    vsize: int
    rss_pages: int
    tty_nr: int

    @property
    def kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)


def read_stat(pid: int | str) -> Stat:
    """Parse /proc/PID/stat; raises OSError (FileNotFoundError when the process is gone)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return parse_stat(f.read().decode(errors="replace"))


def parse_stat(raw: str) -> Stat:
    # comm is in parentheses and may itself hold spaces and parentheses.
    open_paren, close_paren = raw.index("("), raw.rindex(")")
    fields = raw[close_paren + 2:].split()
    # fields[0] is field 3 (state) of proc(5).
    return Stat(
        comm=raw[open_paren + 1:close_paren],
        state=fields[0],
        ppid=int(fields[1]),
        tty_nr=int(fields[4]),
        flags=int(fields[6]),
        utime_ticks=int(fields[11]),
        stime_ticks=int(fields[12]),
        start_ticks=int(fields[19]),
        vsize=int(fields[20]),
        rss_pages=int(fields[21]),
    )


@dataclasses.dataclass(frozen=True)
class Status:
    """Credentials and namespace pids from /proc/PID/status (ids as the daemon's user namespace sees them)."""

    uid: int  # effective
    gid: int  # effective
    groups: tuple[int, ...]
    cap_inh: int
    cap_prm: int
    cap_eff: int
    cap_bnd: int
    nspid: tuple[int, ...]  # the pid in each pid namespace, outermost first


def read_status(pid: int | str) -> Status:
    with open(f"/proc/{pid}/status", "rb") as f:
        return parse_status(f.read().decode(errors="replace"))


def parse_status(text: str) -> Status:
    lines = text.splitlines()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return Status(
        uid=int(fields["Uid"].split()[1]),
        gid=int(fields["Gid"].split()[1]),
        groups=tuple(int(g) for g in fields.get("Groups", "").split()),
        cap_inh=int(fields["CapInh"], 16),
        cap_prm=int(fields["CapPrm"], 16),
        cap_eff=int(fields["CapEff"], 16),
        cap_bnd=int(fields["CapBnd"], 16),
        nspid=tuple(int(p) for p in fields.get("NSpid", fields["Pid"]).split()),
    )


def read_cmdline(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        raw = f.read()
    return [arg.decode(errors="replace") for arg in raw.rstrip(b"\0").split(b"\0")] if raw else []


def ancestors(pid: int) -> set[int]:
    """``pid`` and every process above it, up to PID 1."""
    found = {pid}
    while pid > 1:
        try:
            pid = read_stat(pid).ppid
        except OSError:
            break
        found.add(pid)
    return found


@dataclasses.dataclass(frozen=True)
class IdMap:
    """A user namespace's uid_map or gid_map: ranges (inside, outside, count)."""

    ranges: tuple[tuple[int, int, int], ...]

    def inside(self, outside_id: int) -> int | None:
        """The id in the namespace for the daemon's ``outside_id``; None if unmapped."""
        for inside, outside, count in self.ranges:
            if outside <= outside_id < outside + count:
                return inside + outside_id - outside
        return None


def read_id_map(pid: int | str, which: str) -> IdMap:
    with open(f"/proc/{pid}/{which}_map") as f:
        return IdMap(tuple(tuple(int(x) for x in line.split()) for line in f if line.strip()))  # type: ignore[misc]


# /proc/PID/cgroup: "ID:CONTROLLERS:PATH"; v2 is "0::PATH".
@dataclasses.dataclass(frozen=True)
class CgroupMembership:
    controllers: frozenset[str]  # empty for cgroup v2; {"name=systemd"} for a named v1 hierarchy
    path: str

    @property
    def v2(self) -> bool:
        return not self.controllers


def read_cgroups(pid: int | str) -> list[CgroupMembership]:
    with open(f"/proc/{pid}/cgroup") as f:
        result = []
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            result.append(CgroupMembership(frozenset(c for c in controllers.split(",") if c), path))
        return result


@dataclasses.dataclass(frozen=True)
class CgroupMount:
    controllers: frozenset[str]  # as in CgroupMembership
    root: str  # the mount's root inside the hierarchy
    mount_point: str


_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def cgroup_mounts(known_controllers: frozenset[str] | None = None) -> list[CgroupMount]:
    """The cgroup v1 and v2 mounts visible to this process."""
    known = known_controllers if known_controllers is not None else v1_controllers()
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            if tail[0] == "cgroup2":
                controllers: frozenset[str] = frozenset()
            else:
                options = tail[2].split(",")
                controllers = frozenset(o for o in options if o in known or o.startswith("name="))
            mounts.append(CgroupMount(controllers, _unescape(fields[3]), _unescape(fields[4])))
    return mounts


def v1_controllers() -> frozenset[str]:
    try:
        with open("/proc/cgroups") as f:
            return frozenset(line.split()[0] for line in f if line.strip() and not line.startswith("#"))
    except OSError:
        return frozenset()


def cgroup_dir(membership: CgroupMembership, mounts: list[CgroupMount]) -> str | None:
    """The directory of ``membership`` under a visible mount of its hierarchy, if any."""
    for mount in mounts:
        if mount.controllers != membership.controllers:
            continue
        root = mount.root.rstrip("/")
        if membership.path == root or membership.path.startswith(root + "/"):
            return mount.mount_point + membership.path[len(root):]
    return None


def namespace_id(path: str) -> tuple[int, int]:
    """(device, inode) of a namespace file: equal ids, same namespace."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def boot_id() -> str:
    """This boot's id: a PID and start time name the same process only within one boot."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def is_same_process(pid: int, start_ticks: int, boot: str) -> bool:
    """Whether ``pid`` is still the process that started at ``start_ticks`` in boot ``boot``."""
    try:
        return boot == boot_id() and read_stat(pid).start_ticks == start_ticks
    except OSError:
        return False


def instance_key(pid: int) -> str:
    """``<pid namespace>-<pid>-<start time>``: names a process for as long as it lives, across PID reuse."""
    return f"{os.stat('/proc/self/ns/pid').st_ino}-{pid}-{read_stat(pid).start_ticks}"


def instance_alive(key: str) -> bool:
    """Whether the process ``key`` names still runs; keys from another pid namespace count as alive
    (their PIDs mean nothing here, so nothing of theirs may be taken over)."""
    try:
        namespace, pid, _ = key.split("-")
        if int(namespace) != os.stat("/proc/self/ns/pid").st_ino:
            return True
        # A zombie (killed, not yet reaped by its parent) is gone too.
        return instance_key(int(pid)) == key and read_stat(int(pid)).state != "Z"
    except (ValueError, OSError):
        return False
