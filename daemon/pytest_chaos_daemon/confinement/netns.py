"""A target's network namespace: finding it again, running the daemon's own tools in it, reading it.

Network faults change a target's network namespace, not the target: on
Kubernetes it belongs to the pod's sandbox and outlives a container restart.
Recovery finds it again by its inode (the journal keeps it), through the
target's PID if that still lives there, then bind-mounted namespaces
(``ip netns``), then any process in it; a namespace nothing holds any more is
gone, and so is every rule in it.

The tools (``iptables``, ``tc``, ``ip``) are the daemon's own, run as root
through ``nsenter`` from an fd the daemon opened and checked, never a path
the target could swap.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
from collections.abc import Iterator, Sequence

from ..errors import FailedPrecondition
from .nsexec import ChildProcesses, Completed

NETNS_MOUNT_DIRS = ("/run/netns", "/var/run/netns")
TOOL_TIMEOUT_S = 20.0


def namespace_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def own_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def _candidate_paths(hint_pid: int) -> Iterator[str]:
    yield f"/proc/{hint_pid}/ns/net"
    for directory in NETNS_MOUNT_DIRS:
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(directory)):
                yield os.path.join(directory, name)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield f"/proc/{entry}/ns/net"


def open_namespace(inode: int, hint_pid: int) -> int | None:
    """An fd for the network namespace ``inode``, or None when nothing holds it any more."""
    for path in _candidate_paths(hint_pid):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        if os.fstat(fd).st_ino == inode:  # checked on the open fd: the path may have changed meanwhile
            return fd
        os.close(fd)
    return None


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FailedPrecondition(
            f"network faults need {name} where the chaos daemon runs (its own, never the target's): install it "
            f"there (Debian: apt-get install iptables iproute2 util-linux; the image from daemon/Dockerfile has them)"
        )
    return path


async def run_in(children: ChildProcesses, netns_fd: int, argv: Sequence[str], stdin: str | None = None,
                 check: bool = True) -> Completed:
    """Run the daemon's ``argv`` as root in the network namespace ``netns_fd`` (and nothing else of the target's)."""
    command = [tool("nsenter"), f"--net=/proc/self/fd/{netns_fd}", "--", *argv]
    result = await children.run(command, TOOL_TIMEOUT_S, pass_fds=(netns_fd,), stdin=stdin)
    if check and result.returncode != 0:
        raise FailedPrecondition(f"{' '.join(argv[:3])} failed in the target's network namespace "
                                 f"(exit {result.returncode}): {result.stderr.strip()[:500]}")
    return result


def ipv4_addresses(pid: int) -> list[str]:
    """The IPv4 addresses of the network namespace of ``pid``, loopback left out (from its fib_trie)."""
    try:
        with open(f"/proc/{pid}/net/fib_trie") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found: list[str] = []
    for previous, line in zip(lines, lines[1:], strict=False):
        # "   |-- 10.0.0.2" followed by "      /32 host LOCAL": an address of the namespace's own
        if line.strip() == "/32 host LOCAL" and "|--" in previous:
            address = previous.split("|--", 1)[1].strip()
            if not ipaddress.ip_address(address).is_loopback and address not in found:
                found.append(address)
    return found


def devices(pid: int) -> list[str]:
    """Interface names of the network namespace of ``pid``."""
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            return [line.split(":", 1)[0].strip() for line in f.read().splitlines()[2:] if ":" in line]
    except OSError:
        return []
