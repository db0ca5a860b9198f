"""A local network test bed: targets on a private bridge, and traffic tools that measure them.

A bed is one Linux bridge (``pcb-<6 hex>``) holding a /24 of 10.232.0.0/16
that nothing on the host routes; the host gets .1. Each target (a process
under ``unshare``, or a containerd container) lives in a network namespace
the bed made, wired to the bridge by a veth whose inside end is ``eth0``,
with a default route via .1. Traffic between targets, and between a target
and .1, stays on the bridge: the host's forwarding and NAT are not involved.
Every host-side name of a bed (bridge, veths, namespaces) starts with the
bridge's name, so what a bed leaves behind can be found.

The traffic tools are one stdlib script (``_TOOLS``) that host Python runs
inside a target's network namespace only (``nsenter --net``): they measure
what the target's own network stack does, from outside the chaos daemon.
Servers, receivers and sinks run until their stdin closes, so a test that
dies cannot leave one behind.

IPv6 is disabled in the bed's namespaces and on its host interfaces:
duplicate address detection would change routes under a snapshot, and router
solicitations are traffic no test asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import queue
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tests.support.targets import (
    CONTAINERD_NAMESPACE,
    CONTAINERD_SOCKET,
    label_args,
    make_busybox_rootfs,
    remove_containerd_container,
    require,
    run,
    unique_name,
    wait_for,
)

POOL = ipaddress.ip_network("10.232.0.0/16")
PREFIX = "pcb-"
DEFAULT_ARGV = ("sleep", "3600")
# Serialises choosing a subnet and taking it, between beds of concurrent test runs.
LOCK_PATH = "/run/lock/pytest-chaos-network-bed.lock"
NETNS_DIR = "/run/pytest-chaos-netns"
READY_TIMEOUT_S = 10.0


@dataclasses.dataclass
class NetTarget:
    """A target on a bed: how the plugin and daemon name it, and where its network lives."""

    container_id: str  # pid://<pid> or containerd://<id>; "host" for the bridge's own address
    pid: int  # on the host
    ip: str
    netns_path: str
    selector: dict[str, Any] | None  # for @pytest.mark.chaos(selector=...); None for the host
    name: str = ""
    netns: str = ""  # the bed's name for the namespace, a file under NETNS_DIR
    ip6: str = ""  # on a bed made with ipv6=True: a unique local address, reachable from the bed's targets only
    bed: NetworkBed | None = dataclasses.field(default=None, repr=False, compare=False)

    def run(self, *argv: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a host program in this target's network namespace only (mounts and pids stay the host's)."""
        result = subprocess.run(["nsenter", f"--net={self.netns_path}", *argv],
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {self.name} failed ({result.returncode}): {result.stderr.strip()}")
        return result


@dataclasses.dataclass
class ProbeResult:
    """UDP round trips to an echo server, told apart by sequence number."""

    sent: int
    received: int  # distinct sequence numbers echoed back
    duplicates: int  # extra copies of a sequence number already received
    rtts_ms: list[float]
    out_of_order: int  # replies whose sequence number is below one already received
    malformed: int = 0  # datagrams that did not parse as this probe's (corrupted payloads)
    send_errors: int = 0  # sendto refused locally (an OUTPUT rule, say)

    @property
    def lost(self) -> int:
        return self.sent - self.received

    @property
    def loss(self) -> float:
        return self.lost / self.sent if self.sent else 0.0

    @property
    def median_rtt_ms(self) -> float | None:
        return statistics.median(self.rtts_ms) if self.rtts_ms else None


@dataclasses.dataclass
class UdpCounts:
    """What a UDP receiver got, one way."""

    received: int  # distinct (sender, sequence number)
    duplicates: int
    out_of_order: int
    malformed: int
    datagrams: int  # everything read, duplicates and malformed included


class Background:
    """A tool running in a target's namespace until ``stop``; its stdout lines as they come."""

    def __init__(self, target: NetTarget, tool: str, **args: Any) -> None:
        self.target = target
        self.tool = tool
        self.process = subprocess.Popen(
            ["nsenter", f"--net={target.netns_path}", *_tool_argv(tool, args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._ended = False
        self._readers = [
            threading.Thread(target=self._pump, args=(self.process.stdout, self._lines.put), daemon=True),
            threading.Thread(target=self._pump, args=(self.process.stderr, self._stderr.append), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        try:
            ready = self.line(READY_TIMEOUT_S)
        except TimeoutError:
            ready = None
        if ready != "ready":
            self.stop()
            raise RuntimeError(f"{tool} in {target.name} did not start: {''.join(self._stderr).strip()}")

    @staticmethod
    def _pump(stream: Any, put: Callable[[Any], None]) -> None:
        for line in stream:
            put(line.rstrip("\n"))
        put(None)

    def line(self, timeout: float) -> str | None:
        """The next stdout line; None once the tool has exited."""
        if self._ended:
            return None
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.tool} in {self.target.name} said nothing for {timeout} s") from None
        self._ended = line is None
        return line

    def stop(self, timeout: float = 5.0) -> list[str]:
        """Close its stdin (the tool's signal to finish) and return the lines it printed that nobody read."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        lines = []
        with contextlib.suppress(TimeoutError):
            while (line := self.line(timeout=1.0)) is not None:
                lines.append(line)
        for reader, stream in zip(self._readers, (self.process.stdout, self.process.stderr), strict=False):
            reader.join(timeout=1.0)
            if not reader.is_alive():
                stream.close()
        return lines


class UdpReceiver(Background):
    def result(self, settle_s: float = 0.3) -> UdpCounts:
        """Wait ``settle_s`` for datagrams still on their way (a delay fault), stop, and count."""
        time.sleep(settle_s)
        lines = self.stop()
        if not lines:
            raise RuntimeError(f"udp receiver in {self.target.name} reported nothing: {''.join(self._stderr)}")
        return UdpCounts(**json.loads(lines[-1]))


class NetworkBed:
    """One bridge, the namespaces wired to it, and everything started in them; all removed on ``close``."""

    def __init__(self, rootfs: str | None = None, ipv6: bool = False) -> None:
        """``ipv6``: each target also gets an address of a random unique local /64 (fd00::/8, routed nowhere
        beyond the bed: no route leaves it); without it, IPv6 is off in the targets."""
        require(os.geteuid() == 0, "root (namespaces, links and the bridge need it)")
        for tool in ("ip", "nsenter", "unshare", "sysctl", "tc", "iptables"):
            require(shutil.which(tool) is not None, tool)
        self._rootfs = rootfs
        self.prefix6 = f"fd5c:{secrets.token_hex(2)}:{secrets.token_hex(2)}:{secrets.token_hex(2)}::" if ipv6 else ""
        self._workdir = tempfile.mkdtemp(prefix="pytest-chaos-bed-")
        self._targets: list[NetTarget] = []
        self._outer: list[subprocess.Popen[bytes]] = []
        self._inner: list[int] = []
        self._containers: list[str] = []
        self._links: list[str] = []
        self._netns: list[str] = []
        self._neighbors: list[tuple[str, str, str]] = []  # (namespace path, address, eth0's MAC) of each member
        self._forward_rules: list[tuple[str, tuple[str, ...]]] = []
        self._background: list[Background] = []
        self._sinks: dict[tuple[str, int], Background] = {}
        self._next_index = 1
        self._closed = False
        self.bridge = ""
        try:
            self._create_bridge()
            self._accept_bridged_traffic()
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise
        self.host = NetTarget("host", os.getpid(), self.gateway, f"/proc/{os.getpid()}/ns/net", None,
                              name="host", bed=self)

    def __enter__(self) -> NetworkBed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def targets(self) -> list[NetTarget]:
        return list(self._targets)

    def target(self, ip: str) -> NetTarget | None:
        """The target (or the host) holding ``ip`` on this bed."""
        return next((t for t in (*self._targets, self.host) if t.ip == ip), None)

    def process(self, *argv: str, name: str | None = None, resolv_conf: str | None = None) -> NetTarget:
        """Start ``argv`` (default ``sleep 3600``) as PID 1 of new mount and pid namespaces in a network
        namespace of this bed; ``resolv_conf`` is bind-mounted over /etc/resolv.conf in its mount
        namespace only."""
        argv = argv or DEFAULT_ARGV
        netns, ip = self._new_namespace()
        # The network is ready before argv starts: nsenter joins the bed's namespace, then unshare forks.
        command = ["nsenter", f"--net={netns_path(netns)}",
                   "unshare", "--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private"]
        if resolv_conf is not None:
            path = os.path.join(self._workdir, f"{netns}.resolv.conf")
            with open(path, "w") as f:
                f.write(resolv_conf)
            command += ["/bin/sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', path]
        outer = subprocess.Popen([*command, *argv], stdin=subprocess.DEVNULL)
        self._outer.append(outer)
        children = f"/proc/{outer.pid}/task/{outer.pid}/children"

        def inner_pid() -> int | None:
            if outer.poll() is not None:
                raise RuntimeError(f"{argv} in {netns} exited ({outer.returncode}) before it started")
            # unshare forks, then the child execs argv (after the bind mount): wait until it has.
            with contextlib.suppress(IndexError, ValueError):
                pid = int(_read(children).split()[0])
                if _read(f"/proc/{pid}/cmdline").split("\0")[:-1] == list(argv):
                    return pid
            return None

        pid = int(wait_for(inner_pid, f"{argv} to start in {netns}"))
        self._inner.append(pid)
        return self._add(NetTarget(f"pid://{pid}", pid, ip, f"/proc/{pid}/ns/net", {"pids": [pid]},
                                   name=name or netns, netns=netns, bed=self,
                                   ip6=self.ip6_of(netns) if self.prefix6 else ""))

    def containerd(self, *argv: str, labels: dict[str, str] | None = None, rootfs: str | None = None,
                   resolv_conf: str | None = None, name: str | None = None) -> NetTarget:
        """Run a containerd container (default ``sleep 3600``) in a network namespace of this bed;
        ``resolv_conf`` becomes /etc/resolv.conf of a copy of its rootfs."""
        require(os.path.exists(CONTAINERD_SOCKET) and shutil.which("ctr") is not None, "containerd")
        netns, ip = self._new_namespace()
        root = rootfs or self.rootfs()
        if resolv_conf is not None:
            copy = os.path.join(self._workdir, f"{netns}-rootfs")
            shutil.copytree(root, copy, symlinks=True)
            os.makedirs(os.path.join(copy, "etc"), exist_ok=True)
            with open(os.path.join(copy, "etc", "resolv.conf"), "w") as f:
                f.write(resolv_conf)
            root = copy
        container_id = unique_name()
        self._containers.append(container_id)  # before running: a failed start still leaves a container
        run("ctr", "-n", CONTAINERD_NAMESPACE, "run", "-d", "--env", "PATH=/bin",
            "--with-ns", f"network:{netns_path(netns)}", *label_args(labels), "--rootfs", root,
            container_id, *(argv or DEFAULT_ARGV))
        tasks = run("ctr", "-n", CONTAINERD_NAMESPACE, "tasks", "ls").stdout.splitlines()
        pid = int(next(line.split()[1] for line in tasks[1:] if line.split()[0] == container_id))
        return self._add(NetTarget(f"containerd://{container_id}", pid, ip, f"/proc/{pid}/ns/net",
                                   {"containers": [container_id]}, name=name or netns, netns=netns, bed=self))

    def restart(self, target: NetTarget, timeout: float = 120.0) -> None:
        """Restart a containerd target as a pod's kubelet restarts a container: SIGKILL its task, start a new
        one in the same container (same id, same network namespace, a new pid). ``target`` is updated in place.
        A frozen task dies only once thawed: this waits up to ``timeout`` for that."""
        if not target.container_id.startswith("containerd://"):
            raise ValueError(f"only a containerd target restarts (its id stays); not {target.container_id}")
        container_id = target.container_id.removeprefix("containerd://")
        ctr = ("ctr", "-n", CONTAINERD_NAMESPACE)
        run(*ctr, "tasks", "kill", "-s", "SIGKILL", container_id, check=False)

        def task_deleted() -> bool:
            result = run(*ctr, "tasks", "delete", container_id, check=False)
            return result.returncode == 0 or "not found" in result.stderr

        wait_for(task_deleted, f"task {container_id} to stop", timeout=timeout, interval=0.2)
        run(*ctr, "tasks", "start", "-d", container_id)
        tasks = run(*ctr, "tasks", "ls").stdout.splitlines()
        target.pid = int(next(line.split()[1] for line in tasks[1:] if line.split()[0] == container_id))
        # The namespace is the bed's, not the task's: it outlives the old pid, as a pod's sandbox does.
        target.netns_path = netns_path(target.netns)

    def rootfs(self) -> str:
        """The busybox rootfs containers run on: the one given, or one made for this bed."""
        if self._rootfs is None:
            self._rootfs = make_busybox_rootfs(os.path.join(self._workdir, "rootfs"))
        return self._rootfs

    def close(self) -> None:
        """Remove everything of the bed, then check from outside that nothing is left."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []

        def attempt(what: str, action: Callable[..., object], *args: Any) -> None:
            # One failed step must not leave the rest of the bed behind.
            try:
                action(*args)
            except Exception as err:  # noqa: BLE001 - reported below, after every step ran
                errors.append(f"{what}: {err}")

        for tool in self._background:
            attempt(f"stop {tool.tool}", tool.stop)
        # unshare first: killed after its child, it complains on stderr as it goes.
        for outer in self._outer:
            outer.kill()
            outer.wait()
        for pid in self._inner:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for container_id in self._containers:
            attempt(f"remove container {container_id}", remove_containerd_container, container_id)
        if self._containers:
            # containerd refuses while other tests' containers remain; the last one out removes it.
            run("ctr", "namespaces", "remove", CONTAINERD_NAMESPACE, check=False)
        for link in self._links:
            attempt(f"delete link {link}", _delete_link, link)
        for netns in self._netns:
            attempt(f"delete netns {netns}", remove_namespace, netns)
        for iptables, rule in self._forward_rules:
            attempt(f"delete {iptables} rule", run, iptables, "-w", "-D", *rule)
        if self.bridge:
            attempt(f"delete bridge {self.bridge}", _delete_link, self.bridge)
        shutil.rmtree(self._workdir, ignore_errors=True)
        if self.bridge:
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: not self.leftovers(), f"{self.bridge} to be gone", timeout=5)
            errors += self.leftovers()
        if errors:
            raise RuntimeError(f"network bed {self.bridge} not cleanly removed: " + "; ".join(errors))

    def leftovers(self) -> list[str]:
        """What of this bed still exists, as the host sees it: links, namespaces, rules, processes."""
        found = [f"link {name}" for name in _link_names() if name.startswith(self.bridge)]
        found += [f"netns {name}" for name in _netns_names() if name.startswith(f"{self.bridge}-")]
        for iptables, _ in self._forward_rules:
            rules = run(iptables, "-w", "-S", "FORWARD", check=False).stdout
            found += [f"{iptables} rule {line}" for line in rules.splitlines() if self.bridge in line]
        # Processes this bed started and waited for are asked by their Popen: their pids may be reused.
        children = [*self._outer, *(b.process for b in self._background)]
        found += [f"process {child.pid}" for child in children if child.poll() is None]
        found += [f"process {pid}" for pid in self._inner if _alive(pid)]
        if self._containers:
            listed = run("ctr", "-n", CONTAINERD_NAMESPACE, "containers", "ls", "-q", check=False).stdout.split()
            found += [f"container {c}" for c in self._containers if c in listed]
        return found

    # -- building ---------------------------------------------------------------

    def _create_bridge(self) -> None:
        os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
        with open(LOCK_PATH, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            existing = set(_link_names())
            self.bridge = next(name for name in (f"{PREFIX}{secrets.token_hex(3)}" for _ in range(100))
                               if not any(link.startswith(name) for link in existing))
            self.subnet = _free_subnet()
            self.gateway = str(self.subnet.network_address + 1)
            run("ip", "link", "add", self.bridge, "type", "bridge", "forward_delay", "0")
            _disable_ipv6(self.bridge)
            run("ip", "link", "set", self.bridge, "alias", f"pytest-chaos network bed (pid {os.getpid()})")
            run("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            run("ip", "link", "set", self.bridge, "up")

    def _accept_bridged_traffic(self) -> None:
        """With br_netfilter on, bridged packets cross the host's FORWARD chain, whose policy Docker
        sets to DROP: when it may drop, accept this bridge's own traffic there, and nothing else."""
        if _read("/proc/sys/net/bridge/bridge-nf-call-iptables") != "1":
            return
        for iptables in _iptables_commands():
            if forward_may_drop(run(iptables, "-w", "-S", "FORWARD").stdout.splitlines()):
                rule = ("FORWARD", "-i", self.bridge, "-o", self.bridge,
                        "-m", "comment", "--comment", f"pytest-chaos network bed {self.bridge}", "-j", "ACCEPT")
                self._forward_rules.append((iptables, rule))
                run(iptables, "-w", "-I", rule[0], "1", *rule[1:])

    def _new_namespace(self) -> tuple[str, str]:
        """A named network namespace wired to the bridge: ``eth0`` with the next address (and IPv6 one on an
        ipv6 bed), ``lo`` up, default route via the host's address. Returns its name and address."""
        if self._closed:
            raise RuntimeError(f"network bed {self.bridge} is closed")
        index = self._next_index
        if index + 1 >= self.subnet.num_addresses - 1:
            raise RuntimeError(f"network bed {self.bridge} is full")
        self._next_index += 1
        netns = f"{self.bridge}-{index}"
        ip = str(self.subnet.network_address + index + 1)
        self._netns.append(netns)
        path = new_namespace(netns)
        if not self.prefix6:
            run("nsenter", f"--net={path}", "sysctl", "-q", "-w",
                "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        self._links.append(netns)  # the host end of the veth has the namespace's name
        # Made inside, its other end moved out: the host may have an eth0 of its own.
        run("nsenter", f"--net={path}", "ip", "link", "add", "eth0", "type", "veth", "peer", "name", netns,
            "netns", str(os.getpid()))
        _disable_ipv6(netns)
        run("ip", "link", "set", netns, "master", self.bridge, "up")
        batch = (f"addr add {ip}/{self.subnet.prefixlen} dev eth0\n"
                 "link set lo up\nlink set eth0 up\n"
                 f"route add default via {self.gateway}\n")
        if self.prefix6:  # nodad: usable at once; on-link only, no default route
            batch += f"addr add {self.ip6_of(netns)}/64 dev eth0 nodad\n"
        result = subprocess.run(["nsenter", f"--net={path}", "ip", "-batch", "-"], input=batch, capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise RuntimeError(f"configuring {netns} failed: {result.stderr.strip()}")
        self._know_each_other(path, ip)
        return netns, ip

    def ip6_of(self, netns: str) -> str:
        """The IPv6 address of the bed's namespace ``netns`` (an ipv6 bed's)."""
        return f"{self.prefix6}{int(netns.rsplit('-', 1)[1]) + 1:x}"

    def _know_each_other(self, path: str, ip: str) -> None:
        """Permanent neighbor entries between the new member and every other one. A fault that drops or
        corrupts every frame (netem) hits ARP too: a first datagram sent under it would wait for a resolution
        that may take seconds of retries, while the neighbor queue (about 100 packets) overflows and drops
        the rest, counted nowhere a test looks."""
        # Asked of ip, not read from /sys: sysfs shows the namespace of whoever mounted it, not nsenter's.
        mac = json.loads(run("nsenter", f"--net={path}", "ip", "-j", "link", "show", "eth0").stdout)[0]["address"]
        for other_path, other_ip, other_mac in self._neighbors:
            for at, address, lladdr in ((path, other_ip, other_mac), (other_path, ip, mac)):
                run("nsenter", f"--net={at}", "ip", "neigh", "replace", address, "lladdr", lladdr,
                    "nud", "permanent", "dev", "eth0")
        self._neighbors.append((path, ip, mac))

    def _add(self, target: NetTarget) -> NetTarget:
        self._targets.append(target)
        return target

    def _start(self, cls: type[Background], target: NetTarget, tool: str, **args: Any) -> Background:
        if self._closed:
            raise RuntimeError(f"network bed {self.bridge} is closed")
        background = cls(target, tool, **args)
        self._background.append(background)
        return background


def forward_may_drop(forward_rules: Sequence[str]) -> bool:
    """Whether a FORWARD chain (``iptables -S FORWARD``) may drop bridged packets: any policy but
    ACCEPT, or any rule at all (a rule may jump to a chain that drops)."""
    rules = [line.strip() for line in forward_rules if line.strip()]
    return "-P FORWARD ACCEPT" not in rules or any(line.startswith("-A ") for line in rules)


# -- traffic tools ------------------------------------------------------------------


class ScriptServer:
    """A Python ``script`` a test brings (``python -I -c``), serving in ``target``'s network namespace until
    ``stop`` closes its stdin; it prints ``ready`` once it listens."""

    def __init__(self, target: NetTarget, script: str, *args: str) -> None:
        self.target = target
        self.process = subprocess.Popen(["nsenter", f"--net={target.netns_path}", sys.executable, "-I", "-c", script,
                                         *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def udp_echo_server(target: NetTarget, port: int) -> Background:
    """Echo every UDP datagram to ``target.ip:port`` back to its sender, until the bed closes."""
    return _bed(target)._start(Background, target, "echo", ip=target.ip, port=port)


def udp_probe(source: NetTarget, dest_ip: str, port: int, count: int = 20, interval_s: float = 0.01,
              wait_s: float = 1.0, size: int = 64) -> ProbeResult:
    """Send ``count`` numbered datagrams every ``interval_s`` to an echo server and match the replies,
    waiting ``wait_s`` after the last send for late ones (and duplicates)."""
    result = _tool(source, "probe", timeout=count * interval_s + wait_s + 30, ip=dest_ip, port=port,
                   count=count, interval=interval_s, wait=wait_s, size=size)
    return ProbeResult(**result)


def udp_receiver(target: NetTarget, port: int) -> UdpReceiver:
    """Count numbered datagrams to ``target.ip:port``; ``result()`` stops it and returns the counts."""
    return _bed(target)._start(UdpReceiver, target, "receive", ip=target.ip, port=port)  # type: ignore[return-value]


def udp_send(source: NetTarget, dest_ip: str, port: int, count: int, interval_s: float = 0.001,
             size: int = 64) -> int:
    """Send ``count`` numbered datagrams one way; return how many the kernel accepted."""
    result = _tool(source, "send", timeout=count * interval_s + 30, ip=dest_ip, port=port, count=count,
                   interval=interval_s, size=size)
    return int(result["sent"])


def tcp_listener(target: NetTarget, port: int) -> Background:
    """Accept (and close) TCP connections on ``target.ip:port``, until the bed closes."""
    return _bed(target)._start(Background, target, "listen", ip=target.ip, port=port)


def tcp_connects(source: NetTarget, dest_ip: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether a TCP connection from ``source`` to ``dest_ip:port`` completes within ``timeout_s``."""
    return bool(_tool(source, "connect", timeout=timeout_s + 30, ip=dest_ip, port=port, wait=timeout_s)["connected"])


def tcp_sink(target: NetTarget, port: int) -> Background:
    """Read TCP streams to ``target.ip:port`` to their end and report each one's bytes and duration."""
    bed = _bed(target)
    sink = bed._start(Background, target, "sink", ip=target.ip, port=port)
    bed._sinks[(target.ip, port)] = sink
    return sink


def tcp_throughput(source: NetTarget, dest_ip: str, port: int, seconds: float = 1.0,
                   connect_timeout_s: float = 5.0, sink: Background | None = None, proxied: bool = False) -> float:
    """Bits per second of one TCP stream from ``source`` that writes for ``seconds``, as the sink at
    ``dest_ip:port`` received it (``sink``, or one started there when the destination is on the bed). 0 when
    the connection fails. ``proxied``: the stream reaches the sink through a proxy (the tcp-* kinds'), so the
    sink sees the proxy's port, not the source's: its next report is the stream's."""
    if sink is None:
        bed = _bed(source)
        sink = bed._sinks.get((dest_ip, port))
        if sink is None:
            destination = bed.target(dest_ip)
            if destination is None:
                raise ValueError(f"no sink at {dest_ip}:{port} and no target of {bed.bridge} there to start one")
            sink = tcp_sink(destination, port)
    sent = _tool(source, "source", timeout=connect_timeout_s + seconds + 90, ip=dest_ip, port=port,
                 seconds=seconds, wait=connect_timeout_s)
    if "port" not in sent:
        return 0.0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = sink.line(timeout=max(0.1, deadline - time.monotonic()))
        if line is None:
            raise RuntimeError(f"the sink at {dest_ip}:{port} exited")
        report = json.loads(line)
        if report["peer_port"] == sent["port"] or proxied:
            return report["bytes"] * 8 / report["seconds"] if report["seconds"] > 0 else 0.0
    raise TimeoutError(f"the sink at {dest_ip}:{port} did not report the stream from port {sent['port']}")


def snmp(target: NetTarget, protocol: str = "Udp") -> dict[str, int]:
    """The ``Udp:`` (or ``Ip:``, ...) counters of the target's namespace (InDatagrams, NoPorts, InCsumErrors...)."""
    with open(f"/proc/{target.pid}/net/snmp") as f:
        rows = [line.split()[1:] for line in f if line.startswith(f"{protocol}:")]
    return {key: int(value) for key, value in zip(rows[0], rows[1], strict=False)}


def snapshot(target: NetTarget) -> str:
    """Everything a network fault could change in the target's namespace, without counters, so two
    snapshots of an untouched namespace are equal: netfilter rules, qdiscs, classes and filters,
    links, addresses, policy rules, routes, bound NFQUEUE queues, and its resolver files."""
    sections: list[str] = []

    def section(title: str, text: str) -> None:
        sections.append(f"## {title}\n{text.strip()}".rstrip())

    def command(*argv: str) -> str:
        result = target.run(*argv)
        return "\n".join(part for part in (result.stdout.strip(), result.stderr.strip()) if part)

    for save in ("iptables-save", "ip6tables-save"):
        if shutil.which(save):
            section(save, _normal_iptables(command(save)))
    legacy = _read(f"/proc/{target.pid}/net/ip_tables_names").split()
    if legacy:  # tables of the legacy backend, which iptables-nft does not show
        section("iptables-legacy-save", _normal_iptables(command("iptables-legacy-save"))
                if shutil.which("iptables-legacy-save") else " ".join(sorted(legacy)))
    links = json.loads(target.run("ip", "-j", "-d", "link", "show", check=True).stdout or "[]")
    section("links", "\n".join(
        f"{link['ifname']} kind={link.get('linkinfo', {}).get('info_kind', '-')} mtu={link.get('mtu')} "
        f"{'up' if 'UP' in link.get('flags', []) else 'down'}"
        for link in sorted(links, key=lambda link: link["ifname"])))
    addresses = json.loads(target.run("ip", "-j", "addr", "show", check=True).stdout or "[]")
    section("addresses", "\n".join(
        f"{link['ifname']} {address['local']}/{address['prefixlen']}"
        for link in addresses for address in link.get("addr_info", [])))
    section("tc qdisc", re.sub(r" refcnt \d+", "", command("tc", "qdisc", "show")))
    for link in sorted(link["ifname"] for link in links):
        section(f"tc class {link}", command("tc", "class", "show", "dev", link))
        for where in ("", "ingress", "egress"):
            section(f"tc filter {link} {where}".rstrip(), command("tc", "filter", "show", "dev", link, *where.split()))
    for family in ("-4", "-6"):
        section(f"ip {family} rule", command("ip", family, "rule", "show"))
        section(f"ip {family} route", command("ip", family, "route", "show", "table", "all"))
    # /proc/net/netfilter/nfnetlink_queue: queue, peer portid, queued, copy mode, copy range, counters...
    queues = [line.split() for line in _read(f"/proc/{target.pid}/net/netfilter/nfnetlink_queue").splitlines()]
    section("nfqueue", "\n".join(f"queue {q[0]} copy_mode={q[3]} copy_range={q[4]}" for q in sorted(queues)))
    for path in ("/etc/resolv.conf", "/etc/hosts"):
        section(path, _read(f"/proc/{target.pid}/root{path}") or "(absent)")
    return "\n".join(sections) + "\n"


def kernel_has_netem() -> bool:
    """Whether this kernel takes a netem qdisc, tried in a network namespace made for it (as the daemon checks,
    but from outside it)."""
    global _NETEM
    if _NETEM is None:
        if shutil.which("modprobe"):
            subprocess.run(["modprobe", "-q", "sch_netem"], capture_output=True, check=False)
        _NETEM = subprocess.run(["unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay",
                                 "1ms"], capture_output=True, check=False).returncode == 0
    return _NETEM


_NETEM: bool | None = None


def emulations() -> list[str]:
    """The mechanisms the netem kinds can use on this kernel (the daemon's ``--network-emulation``): the packet
    queue everywhere, netem where the kernel has it. Tests of those kinds run once per mechanism."""
    return ["netem", "queue"] if kernel_has_netem() else ["queue"]


# -- internals -------------------------------------------------------------------------


def measured(what: str, value: float, requested: str) -> None:
    """Printed for the record (``-rP`` shows it): what the traffic saw against what was asked."""
    print(f"\n{what}: measured {value:.4g}, requested {requested}")




# -- DNS and statistics -------------------------------------------------------------

# A test-owned DNS server (A 10.9.9.9 for any name; other types: no answer), and a query sent from inside a
# target's network namespace, as its resolver would send it.
DNS_SERVER = r'''
import socket, struct, sys
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    query, peer = udp.recvfrom(4096)
    end = 12
    while query[end]:
        end += query[end] + 1
    qtype = struct.unpack_from("!H", query, end + 1)[0]
    question = query[12:end + 5]
    answers = b""
    if qtype == 1:
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("10.9.9.9")
    header = struct.pack("!6H", struct.unpack_from("!H", query)[0], 0x8180, 1, 1 if answers else 0, 0, 0)
    udp.sendto(header + question + answers, peer)
'''

DNS_QUERY = r'''
import json, socket, sys
import dns.message, dns.rdatatype  # an independent decoder, not the responder's own codec
server, name, qtype = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(3)
sock.sendto(dns.message.make_query(name, qtype).to_wire(), (server, 53))
reply = dns.message.from_wire(sock.recv(4096))
addresses = [rdata.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rdata in rrset]
print(json.dumps({"rcode": reply.rcode(), "addresses": addresses}))
'''


def dns_query(source: NetTarget, server: str, name: str, qtype: int = 1) -> dict[str, Any]:
    result = source.run(sys.executable, "-c", DNS_QUERY, server, name, str(qtype), check=True)
    return json.loads(result.stdout)


def _bed(target: NetTarget) -> NetworkBed:
    if target.bed is None:
        raise ValueError(f"{target.name} is not on a network bed")
    return target.bed


def _tool_argv(tool: str, args: dict[str, Any]) -> list[str]:
    return [sys.executable, "-I", "-c", _TOOLS, tool, json.dumps(args)]


def _tool(target: NetTarget, tool: str, timeout: float, **args: Any) -> dict[str, Any]:
    result = target.run(*_tool_argv(tool, args), timeout=timeout)
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(f"{tool} in {target.name} failed ({result.returncode}): {result.stderr.strip()}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _normal_iptables(text: str) -> str:
    """iptables-save output without its dated comments and packet counters, and without tables that hold
    nothing but built-in chains accepting everything: listing or touching a table instantiates it empty."""
    tables: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith("*"):
            tables.append([])
        if tables:
            tables[-1].append(re.sub(r"\[\d+:\d+\]", "[0:0]", line))
    kept = [table for table in tables
            if not all(re.fullmatch(r"\*\w+|:[A-Z]+ ACCEPT \[0:0\]|COMMIT", line) for line in table)]
    return "\n".join(line for table in kept for line in table)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    return bool(stat) and stat.rsplit(")", 1)[1].split()[0] != "Z"


def _link_names() -> list[str]:
    return [link["ifname"] for link in json.loads(run("ip", "-j", "link", "show").stdout or "[]")]


def _netns_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def new_namespace(name: str) -> str:
    """A network namespace kept by a bind mount on a file of ours, not under /run/netns: ``ip netns add``
    bind-mounts /run/netns over itself once, which hides the mounts of the namespaces the container
    runtime made before, so it can no longer remove them (a pod being deleted then hangs)."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    path = netns_path(name)
    open(path, "w").close()
    run("unshare", f"--net={path}", "true")
    return path


def remove_namespace(name: str) -> None:
    path = netns_path(name)
    run("umount", path, check=False)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _delete_link(name: str) -> None:
    result = run("ip", "link", "delete", name, check=False)
    if result.returncode != 0 and "Cannot find device" not in result.stderr:
        raise RuntimeError(result.stderr.strip())


def _disable_ipv6(link: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # no IPv6 on this host at all
        with open(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6", "w") as f:
            f.write("1")


def _free_subnet() -> ipaddress.IPv4Network:
    """A random /24 of the pool that no route or address of the host overlaps."""
    used = []
    for route in json.loads(run("ip", "-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        with contextlib.suppress(ValueError, KeyError):
            if route["dst"] != "default":
                used.append(ipaddress.ip_network(route["dst"], strict=False))
    for link in json.loads(run("ip", "-j", "-4", "addr", "show").stdout or "[]"):
        for address in link.get("addr_info", []):
            used.append(ipaddress.ip_interface(f"{address['local']}/{address['prefixlen']}").network)
    free = [net for net in POOL.subnets(new_prefix=24) if not any(net.overlaps(u) for u in used)]
    if not free:
        raise RuntimeError(f"every /24 of {POOL} is routed on this host")
    return random.choice(free)


def _iptables_commands() -> Iterator[str]:
    """The iptables front ends whose FORWARD chain the host's packets cross: the default one, and
    the legacy one too when it holds a filter table next to nf_tables."""
    yield "iptables"
    if ("nf_tables" in run("iptables", "-V").stdout and shutil.which("iptables-legacy")
            and "filter" in _read("/proc/net/ip_tables_names").split()):
        yield "iptables-legacy"


# The traffic tools, run by host Python in a target's network namespace. Servers print "ready"
# once bound and run until stdin closes; the others print one JSON line.
_TOOLS = r'''
import json, os, select, socket, sys, time

def say(value):
    print(value if isinstance(value, str) else json.dumps(value), flush=True)

def stdin_closed(readable):
    return 0 in readable and not os.read(0, 4096)

def payload(nonce, seq, size):
    return (b"PCB %s %d " % (nonce, seq)).ljust(size, b".")

def parse(data):
    parts = data.split(b" ", 3)
    try:
        if parts[0] == b"PCB":
            return parts[1], int(parts[2])
    except (IndexError, ValueError):
        pass
    return None, None

def udp_socket(ip, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # A burst must not overflow the socket buffer and pass for loss; FORCE ignores rmem_max (root).
    for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, 8 << 20)
            break
        except OSError:
            continue
    sock.bind((ip, port))
    sock.setblocking(False)
    return sock

def datagrams(sock):
    while True:
        try:
            yield sock.recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # an ICMP error queued on the socket
            continue

def echo(ip, port):
    sock = udp_socket(ip, port)
    say("ready")
    while True:
        readable, _, _ = select.select([sock, 0], [], [])
        if sock in readable:
            for data, peer in datagrams(sock):
                try:
                    sock.sendto(data, peer)
                except OSError:
                    pass
        if stdin_closed(readable):
            return

def probe(ip, port, count, interval, wait, size):
    sock = udp_socket("0.0.0.0", 0)
    nonce = os.urandom(4).hex().encode()
    sent_at, seen = {}, set()
    rtts, duplicates, out_of_order, malformed, send_errors, highest = [], 0, 0, 0, 0, -1
    start, seq = time.monotonic(), 0
    deadline = None if count else start + wait
    while True:
        now = time.monotonic()
        if seq < count and now >= start + seq * interval:
            try:
                sock.sendto(payload(nonce, seq, size), (ip, port))
            except OSError:
                send_errors += 1
            sent_at[seq] = now
            seq += 1
            if seq == count:
                deadline = now + wait
            continue
        if deadline is not None and now >= deadline:
            break
        wake = deadline if deadline is not None else start + seq * interval
        readable, _, _ = select.select([sock], [], [], max(0.0, wake - now))
        if not readable:
            continue
        for data, _ in datagrams(sock):
            arrived = time.monotonic()
            got_nonce, got_seq = parse(data)
            if got_nonce != nonce or got_seq not in sent_at:
                malformed += 1
            elif got_seq in seen:
                duplicates += 1
            else:
                seen.add(got_seq)
                rtts.append(round((arrived - sent_at[got_seq]) * 1000, 3))
                if got_seq < highest:
                    out_of_order += 1
                highest = max(highest, got_seq)
    say({"sent": count, "received": len(seen), "duplicates": duplicates, "rtts_ms": rtts,
         "out_of_order": out_of_order, "malformed": malformed, "send_errors": send_errors})

def receive(ip, port):
    sock = udp_socket(ip, port)
    say("ready")
    seen, highest = set(), {}
    counts = {"duplicates": 0, "out_of_order": 0, "malformed": 0, "datagrams": 0}
    def drain():
        for data, peer in datagrams(sock):
            counts["datagrams"] += 1
            nonce, seq = parse(data)
            key = (peer, nonce)
            if nonce is None:
                counts["malformed"] += 1
            elif (key, seq) in seen:
                counts["duplicates"] += 1
            else:
                seen.add((key, seq))
                if seq < highest.get(key, -1):
                    counts["out_of_order"] += 1
                highest[key] = max(highest.get(key, -1), seq)
    while True:
        readable, _, _ = select.select([sock, 0], [], [])
        if sock in readable:
            drain()
        if stdin_closed(readable):
            drain()
            break
    say(dict(counts, received=len(seen)))

def send(ip, port, count, interval, size):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    nonce = os.urandom(4).hex().encode()
    errors, start = 0, time.monotonic()
    for seq in range(count):
        pause = start + seq * interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        try:
            sock.sendto(payload(nonce, seq, size), (ip, port))
        except OSError:
            errors += 1
    say({"sent": count - errors, "errors": errors})

def tcp_server(ip, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((ip, port))
    sock.listen(128)
    say("ready")
    return sock

def listen(ip, port):
    sock = tcp_server(ip, port)
    while True:
        readable, _, _ = select.select([sock, 0], [], [])
        if sock in readable:
            connection, _ = sock.accept()
            connection.close()
        if stdin_closed(readable):
            return

def connect(ip, port, wait):
    try:
        socket.create_connection((ip, port), timeout=wait).close()
        say({"connected": True})
    except OSError as err:
        say({"connected": False, "error": str(err)})

def sink(ip, port):
    sock = tcp_server(ip, port)
    while True:
        readable, _, _ = select.select([sock, 0], [], [])
        if stdin_closed(readable):
            return
        if sock not in readable:
            continue
        connection, peer = sock.accept()
        accepted = last = time.monotonic()
        received = 0
        while True:
            readable, _, _ = select.select([connection, 0], [], [])
            if stdin_closed(readable):
                return
            if connection in readable:
                try:
                    data = connection.recv(1 << 20)
                except OSError:
                    break
                if not data:
                    break
                received += len(data)
                last = time.monotonic()
        connection.close()
        say({"peer_port": peer[1], "bytes": received, "seconds": last - accepted})

def source(ip, port, seconds, wait):
    try:
        sock = socket.create_connection((ip, port), timeout=wait)
    except OSError as err:
        say({"error": str(err)})
        return
    sock.setblocking(False)
    chunk, sent = bytes(1 << 16), 0
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        _, writable, _ = select.select([], [sock], [], end - now)
        if writable:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                pass
            except OSError as err:
                say({"port": sock.getsockname()[1], "sent": sent, "error": str(err)})
                return
    local_port = sock.getsockname()[1]
    sock.shutdown(socket.SHUT_WR)
    # The sink closes once it has read everything: wait for that, so its report is complete.
    sock.setblocking(True)
    sock.settimeout(60)
    try:
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass
    say({"port": local_port, "sent": sent})

tool, args = sys.argv[1], json.loads(sys.argv[2])
{"echo": echo, "probe": probe, "receive": receive, "send": send, "listen": listen,
 "connect": connect, "sink": sink, "source": source}[tool](**args)
'''
