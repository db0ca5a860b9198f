"""The soak: many lasting faults, overlapping on shared targets, while runners, daemons and targets die at random.

Chaos tools are trusted on one question: after the experiment, is every target exactly as it was? This
script asks it of the lifecycle as a whole (journal, leases, adoption, recovery), not of one piece.

Each experiment is a runner (a child process, as a pytest run is) that applies one lasting fault of a random
kind to a random target with a short lease, renews it while it holds, then recovers it, as a test's teardown
does. Several runners run at once, so faults overlap on one target (pause plus stress included). Meanwhile,
at seeded random moments, the soak SIGKILLs a runner (its faults must be recovered when their lease runs
out), and its bed's events happen:

* the local bed (default): processes (pid://) and containerd containers on the tests' network bed
  (tests/support/network_bed.py), each in a network namespace of its own, served by one daemon on a journal
  of its own. The daemon is SIGKILLed and started again on the same journal (the successor adopts what was
  in force); a container target restarts as a kubelet restarts a crashed container (its task SIGKILLed, a
  new one in the same container and network namespace: faults in force on it must still be recovered, and
  never into the new process); containerd stalls (SIGSTOP, then SIGCONT from a watchdog process even if the
  soak dies) for a few seconds, while the daemon looks containers up and recovers faults.
* the kind bed (``--kind``, benchmarks/soak_kind.py): busybox pods, served by the DaemonSet's daemons over
  mutual TLS. A daemon pod is deleted (gracefully or forced) and the DaemonSet's new pod adopts the node's
  journal; a daemon's container is SIGKILLed and the kubelet restarts it; a node's containerd stalls.

At checkpoints, and at the end, it waits until nothing is in force and compares every target with what was
seen before the first fault: its network namespace (rules, qdiscs, links, bound queues, resolver files:
``snapshot``), its freezer (thawed; a pid target not stopped), its vDSO (no clock patch), and the machine: no
stress-ng, packet queue, DNS responder or timeshift helper left, no live record in a journal, none in a
daemon's ListInjections; on the kind bed, every target pod the same pod, unrestarted, its images and
annotations unchanged. It prints one table; it exits 1 if anything was left behind or a recovery failed.

The local bed's containers live in the tests' containerd namespace, which a run of the project's tests sweeps
at its end: run those meanwhile with PYTEST_CHAOS_LEFTOVER_SWEEP=0, or the soak reports its containers dead.
The kind soak deletes daemon pods: run no other test on the kind bed meanwhile.

Run as root:
    python3 benchmarks/soak.py --short        # about 3 minutes (.ci/run)
    python3 benchmarks/soak.py                # 500 experiments
    python3 benchmarks/soak.py --experiments 100 --seed 7
    python3 benchmarks/soak.py --kind --short # on the kind bed (pytest-chaos-cluster up, daemons deployed)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import glob
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root is the import root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402

from benchmarks.report import Row, machine, table  # noqa: E402
from pytest_chaos.api.v1 import chaos_daemon_pb2 as pb  # noqa: E402
from pytest_chaos.api.v1 import chaos_daemon_pb2_grpc as pb_grpc  # noqa: E402
from pytest_chaos.errors import ChaosError  # noqa: E402

FULL, SHORT = 500, 200
CONCURRENT = 6  # runners alive at once
LEASE_S = 3  # short, as a soak of a runner's death wants (--chaos-lease)
HOLD_S = (1.0, 6.0)  # how long a runner holds its fault before its teardown recovers it
DURATION_SHARE = 0.25  # experiments whose fault also has a duration, ending mid-hold
KILL_RUNNER_EVERY = 6  # one runner SIGKILLed per this many experiments started, on average
KILL_DAEMON_EVERY = 25
RESTART_TARGET_EVERY = 20  # a container target restarted per this many experiments started, on average
STALL_RUNTIME_EVERY = 50
STALL_S = (2.0, 8.0)
CHECKPOINT_EVERY, SHORT_CHECKPOINT_EVERY = 100, 100
QUIET_TIMEOUT_S = 60.0
LIVE = ("active", "applying")
PROGRAMS = ("stress-ng", "pytest_chaos_daemon.programs", "pytest-chaos-timeshift")
DAEMON_MODULE = "pytest_chaos_daemon"

KINDS = ("container-pause", "stress", "network-delay", "network-loss", "network-duplicate", "network-corrupt",
         "network-bandwidth", "network-netem", "network-partition", "dns", "time", "tcp-latency", "tcp-down",
         "http-delay", "http-abort")
PORTS = (8080, 9090)  # the ports the proxy kinds redirect (served or not: the proxy is there either way)


def fault(kind: str, rng: random.Random, peer: dict[str, list[str]]) -> dict[str, Any]:
    """The ApplyRequest fields of one lasting fault of ``kind`` (JSON, as the runner gets it); ``peer`` names the
    network kinds' peer as the target's daemon can find it (NetworkScope: ``peer_container_ids`` on one node,
    ``peers``, its IP, across nodes)."""
    scope = {**peer, "direction": rng.choice(["DIRECTION_TO", "DIRECTION_FROM"])}
    return {
        "container-pause": lambda: {"containerPause": {}},
        "stress": lambda: {"stress": rng.choice([{"cpu": {"workers": 1, "load": 10}},
                                                 {"memory": {"workers": 1, "size": "16MB"}}])},
        "network-delay": lambda: {"networkDelay": {"scope": scope, "latency": f"{rng.randint(5, 50) / 1000}s"}},
        "network-loss": lambda: {"networkLoss": {"scope": scope, "loss": rng.choice([10, 50])}},
        "network-duplicate": lambda: {"networkDuplicate": {"scope": scope, "duplicate": 20}},
        "network-corrupt": lambda: {"networkCorrupt": {"scope": scope, "corrupt": 20}},
        "network-bandwidth": lambda: {"networkBandwidth": {"scope": scope, "rate": 1 << 20, "limit": 1 << 16,
                                                           "buffer": 1 << 14}},
        "network-partition": lambda: {"networkPartition": {"scope": scope}},
        "dns": lambda: {"dns": {"action": rng.choice(["ACTION_ERROR", "ACTION_RANDOM"]),
                                "patterns": ["soak.example.*"]}},
        "network-netem": lambda: {"networkNetem": {"scope": scope, "delay": {"latency": "0.01s"},
                                                   "loss": {"loss": 10}}},
        "time": lambda: {"time": {"timeOffset": f"{rng.choice([-7200, 3600])}s"}},
        "tcp-latency": lambda: {"tcpToxic": {"port": rng.choice(PORTS), "latency": {"latency": 20}}},
        "tcp-down": lambda: {"tcpToxic": {"port": rng.choice(PORTS), "down": {}}},
        "http-delay": lambda: {"http": {"port": rng.choice(PORTS), "delay": "0.1s", "kind": "KIND_DELAY"}},
        "http-abort": lambda: {"http": {"port": rng.choice(PORTS), "abort": True, "kind": "KIND_ABORT"}},
    }[kind]()


# -- the runner: one experiment, as a test run holds it --------------------------------------------------------

def runner_main() -> int:
    """Apply the experiment on stdin, renew its lease while holding it, recover it; print what happened."""
    plan = json.load(sys.stdin)
    reach = Reach(plan["reach"])
    request = json_format.ParseDict({"containerId": plan["target"], "injection": {
        "id": plan["id"], "owner": f"soak runner {os.getpid()}", "lease": f"{LEASE_S}s"}, **plan["fault"]},
        pb.ApplyRequest())
    if plan.get("duration_s"):
        request.duration.FromNanoseconds(int(plan["duration_s"] * 1e9))

    def say(**event: Any) -> None:
        print(json.dumps({"id": plan["id"], **event}), flush=True)

    try:
        reach.call(lambda stub: stub.Apply(request, timeout=30))
    except grpc.RpcError as err:
        say(event="refused", code=err.code().name, detail=(err.details() or "")[:300])
        return 0
    except ChaosError as err:  # no daemon pod on the node for all of the call's patience
        say(event="refused", code="UNAVAILABLE", detail=str(err)[:300])
        return 0
    say(event="applied")
    until = time.monotonic() + plan["hold_s"]
    while time.monotonic() < until:  # the plugin renews every third of the lease
        time.sleep(min(LEASE_S / 3, max(until - time.monotonic(), 0)))
        with contextlib.suppress(grpc.RpcError, ChaosError):  # missed renewals: the lease may run out, as it would
            reach.call(lambda stub: stub.Renew(pb.RenewRequest(injection_ids=[plan["id"]], lease={"seconds": LEASE_S}),
                                               timeout=5), patience_s=0)
    [status] = reach.call(lambda stub: stub.Recover(pb.RecoverRequest(injection_ids=[plan["id"]]), timeout=60)).injections
    say(event="recovered", state=pb.InjectionStatus.State.Name(status.state), detail=status.detail[:300])
    return 0


class Reach:
    """A runner's way to its target's daemon: a local socket, or a kind node's daemon pod over mutual TLS, found
    again through the API server when a call cannot reach it (the pod was deleted and replaced), as the
    plugin's kubernetes backend finds it."""

    def __init__(self, reach: dict[str, Any], backend: Any = None) -> None:
        self.reach = reach
        self.address: str = reach.get("address", "")
        self._stub: pb_grpc.ChaosDaemonStub | None = None
        self._backend = backend  # the kubernetes backend that looks daemons up (a runner makes its own)
        # Look the daemon up again (kind: its pod may be new): at first when the backend is shared and may
        # know an old pod, and after a call could not reach it.
        self._stale = backend is not None

    def stub(self) -> pb_grpc.ChaosDaemonStub:
        if self._stub is not None and not self._stale:
            return self._stub
        if "node" not in self.reach:
            self._stub = pb_grpc.ChaosDaemonStub(grpc.insecure_channel(self.address))
            return self._stub
        from pytest_chaos.api.contract import TLS_SERVER_NAME, grpc_target
        from pytest_chaos.backends.kubernetes import KubernetesBackend
        from pytest_chaos.model import Target

        if self._backend is None:
            self._backend = KubernetesBackend(kubeconfig=self.reach["kubeconfig"])
        self.address = self._backend.daemon_address(Target("", node=self.reach["node"]), refresh=self._stale)
        self._stale = False
        tls = self.reach["tls"]
        credentials = grpc.ssl_channel_credentials(tls["ca"].encode(), tls["key"].encode(), tls["cert"].encode())
        self._stub = pb_grpc.ChaosDaemonStub(grpc.secure_channel(
            grpc_target(self.address), credentials, options=[("grpc.ssl_target_name_override", TLS_SERVER_NAME)]))
        return self._stub

    def call(self, rpc: Any, patience_s: float = 90) -> Any:
        """``rpc(stub)``, retried while the daemon is away (SIGKILLed, or its pod replaced, and not yet back)."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return rpc(self.stub())
            except (grpc.RpcError, ChaosError) as err:  # ChaosError: no daemon pod runs on the node just now
                away = isinstance(err, ChaosError) or err.code() == grpc.StatusCode.UNAVAILABLE
                self._stale = away and "node" in self.reach
                if not away or time.monotonic() >= deadline:
                    raise
                time.sleep(0.25)


# -- the soak ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Runner:
    id: str
    kind: str
    target: str
    process: subprocess.Popen[str]
    killed_at: float | None = None  # wall clock, as the daemon's ended_at
    started: float = dataclasses.field(default_factory=time.monotonic)


class Daemon:
    """One daemon on a fixed socket and journal, SIGKILLed and started again at will; how long each start took
    until it answered GetInfo (``restarts``)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.socket = os.path.join(directory, "daemon.sock")
        self.state = os.path.join(directory, "state")
        self.log_path = os.path.join(directory, "daemon.log")
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts: list[float] = []  # seconds from start to serving, per restart
        self.start()

    def start(self) -> None:
        begun = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", DAEMON_MODULE, "--listen", f"unix://{self.socket}", "--state-dir", self.state,
                 "--containerd-namespace", "*", "--allow-pid-targets", "--log-level", "info",
                 # A soak that dies takes its daemon along, and the daemon what it holds (a SIGKILL skips it).
                 "--exit-with-parent", str(os.getpid()), "--recover-on-exit"],
                stdout=log, stderr=log, start_new_session=True)
        while True:  # until it answers GetInfo, or says why it cannot
            if self.process.poll() is not None:
                with open(self.log_path) as log:
                    last = [line for line in log.read().splitlines() if line.strip()][-1:]
                raise RuntimeError(f"the daemon exited ({self.process.returncode}) before serving: "
                                   f"{''.join(last)} (log: {self.log_path})")
            if time.monotonic() - begun > 60:
                raise RuntimeError(f"the daemon did not serve within 60 s (log: {self.log_path})")
            # A channel per attempt: a channel that could not connect waits out a reconnect backoff (1 s, then
            # longer) before it tries again, which would be timed instead of the daemon.
            with grpc.insecure_channel(f"unix://{self.socket}") as channel:
                try:
                    pb_grpc.ChaosDaemonStub(channel).GetInfo(pb.GetInfoRequest(), timeout=5)
                    break
                except grpc.RpcError:
                    time.sleep(0.02)
        self.restarts.append(time.monotonic() - begun)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stub(self) -> pb_grpc.ChaosDaemonStub:
        return pb_grpc.ChaosDaemonStub(grpc.insecure_channel(f"unix://{self.socket}"))

    def journal_live(self) -> list[str]:
        live = []
        for path in glob.glob(os.path.join(self.state, "injections", "*.json")):
            with contextlib.suppress(OSError, ValueError):
                with open(path) as f:
                    record = json.load(f)
                if record.get("state") in LIVE:
                    live.append(f"{record.get('id')} ({record.get('kind')}, {record.get('state')})")
        return live

    def resources(self) -> dict[str, int]:
        """The daemon's RSS (KiB), open fds and threads."""
        with open(f"/proc/{self.pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {"rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]),
                "fds": len(os.listdir(f"/proc/{self.pid}/fd"))}


class Stall:
    """A container runtime stopped (SIGSTOP) for a few seconds. A watchdog process, started first and in a
    session of its own, continues it even if the soak is killed meanwhile; the soak's checkpoints and its end
    continue it too."""

    def __init__(self) -> None:
        self.watchdog: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def start(self, pid: int, seconds: float) -> bool:
        if self.watchdog is not None and self.watchdog.poll() is None:
            return False
        self.watchdog = subprocess.Popen(["sh", "-c", f"sleep {seconds:.1f}; kill -CONT {pid}"], start_new_session=True)
        os.kill(pid, signal.SIGSTOP)
        self.pid = pid
        return True

    def end(self) -> None:
        if self.watchdog is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
            self.watchdog.kill()
            self.watchdog.wait()
            self.watchdog = None


Event = tuple[float, Callable[[random.Random], "str | None"]]  # (its chance per experiment started, what it does)


def read_records(paths: list[str]) -> dict[str, dict[str, Any]]:
    """Journal records (one JSON file per injection) by injection id; a file being rewritten is skipped."""
    found = {}
    for path in paths:
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                record = json.load(f)
            found[record["id"]] = record
    return found


class LocalWorld:
    """Processes (pid://) and containerd containers on the tests' network bed, each in a network namespace of
    its own, and one daemon for them on a local socket and a journal of its own. Its events: the daemon
    SIGKILLed and started again, a container target restarted, containerd stalled."""

    name = "local"

    def __init__(self, workdir: str, pids: int, containers: int) -> None:
        from tests.support.network_bed import NetworkBed

        self.bed = NetworkBed()
        try:
            resolv_conf = f"nameserver {self.bed.gateway}\n"  # dns forwards other names there (nothing answers)
            self.targets = [self.bed.process(resolv_conf=resolv_conf) for _ in range(pids)] + [
                self.bed.containerd(resolv_conf=resolv_conf) for _ in range(containers)]
            self.daemon = Daemon(workdir)
        except BaseException:
            self.bed.close()
            raise
        self.resources_start = self.daemon.resources()
        self.resources_end: dict[str, int] = {}
        self.restarting: dict[str, threading.Thread] = {}  # container id -> the thread restarting it
        self.restart_errors: list[str] = []
        self.stall = Stall()

    def reach(self, target: Any) -> dict[str, Any]:
        return {"address": f"unix://{self.daemon.socket}"}

    def peer(self, peer: Any) -> dict[str, list[str]]:
        return {"peer_container_ids": [peer.container_id]}

    def events(self) -> list[Event]:
        return [(1 / KILL_DAEMON_EVERY, self.kill_daemon), (1 / RESTART_TARGET_EVERY, self.restart_target),
                (1 / STALL_RUNTIME_EVERY, self.stall_runtime)]

    def kill_daemon(self, rng: random.Random) -> str:
        self.daemon.kill()
        time.sleep(rng.uniform(0, 1.5))  # down a moment: runners' calls wait, leases run on
        self.daemon.start()
        return "daemon SIGKILL + restart"

    def restart_target(self, rng: random.Random) -> str | None:
        """Restart a container target in the background, as a kubelet restarts a crashed container: a paused
        one dies only once its pause is recovered, and runners go on meanwhile (their faults on it are refused,
        or recovered, as the daemon finds it)."""
        containers = [t for t in self.targets if t.container_id.startswith("containerd://")
                      and t.container_id not in self.restarting]
        if not containers:
            return None
        target = rng.choice(containers)

        def restart() -> None:
            try:
                self.bed.restart(target)
            except Exception as err:  # noqa: BLE001 - reported in the table: a target the soak could not restart
                self.restart_errors.append(f"{target.container_id}: restart failed: {err}")

        thread = threading.Thread(target=restart, name=f"restart {target.container_id}")
        self.restarting[target.container_id] = thread
        thread.start()
        return "target restart (container task SIGKILLed, started again)"

    def stall_runtime(self, rng: random.Random) -> str | None:
        pid = containerd_pid()
        if pid is None or not self.stall.start(pid, rng.uniform(*STALL_S)):
            return None
        return "containerd stalled (SIGSTOP for 2-8 s)"

    def settle(self) -> None:
        """Every stall ended and every restart done."""
        self.stall.end()
        for thread in self.restarting.values():
            thread.join()
        self.restarting.clear()

    def live(self) -> list[str]:
        statuses = self.daemon.stub().ListInjections(pb.ListInjectionsRequest(), timeout=30).injections
        return [f"{s.injection_id} ({s.kind} on {s.container_id})" for s in statuses]

    def records(self) -> dict[str, dict[str, Any]]:
        return read_records(glob.glob(os.path.join(self.daemon.state, "injections", "*.json")))

    def changed(self) -> list[str]:
        return []  # the targets' own state is compared by the soak; a local target has no API object

    def problems(self) -> list[str]:
        return self.restart_errors

    def rows(self) -> list[Row]:
        rows = [Row("target restarts that failed", str(len(self.restart_errors)), goal="0",
                    met=not self.restart_errors)]
        if len(self.daemon.restarts) > 1:
            restarts = sorted(self.daemon.restarts[1:])
            rows.append(Row("restarted daemon: start to serving", f"max {restarts[-1]:.2f} s",
                            f"median {statistics.median(restarts):.2f} s of {len(restarts)}", goal="<= 5 s",
                            met=restarts[-1] <= 5))
        start, end = self.resources_start, self.resources_end
        if start and end:
            rows.append(Row("daemon RSS start -> end",
                            f"{start['rss_kb'] / 1024:.1f} -> {end['rss_kb'] / 1024:.1f} MB"))
            rows.append(Row("daemon fds start -> end", f"{start['fds']} -> {end['fds']}"))
            rows.append(Row("daemon threads start -> end", f"{start['threads']} -> {end['threads']}"))
        return rows

    def close(self) -> None:
        self.settle()
        self.resources_end = self.daemon.resources() if self.daemon.process.poll() is None else {}
        self.daemon.stop()
        self.bed.close()

    def keep(self) -> str:
        return f"the daemon's log and journal: {self.daemon.directory}"


class Soak:
    def __init__(self, world: Any, experiments: int, seed: int, checkpoint_every: int) -> None:
        self.world = world
        self.experiments, self.seed, self.checkpoint_every = experiments, seed, checkpoint_every
        self.rng = random.Random(seed)
        # Ids unique across runs too: a kind node's journal keeps ended records for an hour.
        self.run_id = f"soak-{seed}-{random.SystemRandom().randrange(16 ** 6):06x}"
        self.targets = list(world.targets)
        self.before = {t.container_id: self.look(t) for t in self.targets}
        self.runners: dict[str, Runner] = {}
        self.done: list[tuple[Runner, list[dict[str, Any]]]] = []
        self.kills: collections.Counter[str] = collections.Counter()
        self.left: list[str] = []
        self.lost: list[str] = []  # targets that died: none of the soak's kinds kills one
        self.checkpoints = 0

    def look(self, target: Any) -> dict[str, Any]:
        """What a fault could change in ``target``, as seen from outside the daemon."""
        from pytest_chaos_daemon.confinement import freezer
        from pytest_chaos_daemon.errors import DaemonError
        from pytest_chaos_daemon.faults import vdso

        from tests.support.network_bed import snapshot

        pid = target.pid
        try:
            vdso.read_layout(pid)
            clock = "own"
        except DaemonError as err:  # "already has its clocks shifted" when a patch is left
            clock = err.message
        return {"network": snapshot(target), "paused": freezer.paused(pid), "clock": clock}

    def run(self) -> bool:
        started = 0
        events = [(1 / KILL_RUNNER_EVERY, self.kill_runner), *self.world.events()]
        try:
            while started < self.experiments or self.runners:
                self.reap()
                if started < self.experiments and len(self.runners) < CONCURRENT:
                    self.launch(f"{self.run_id}-{started}")
                    started += 1
                    for chance, event in events:
                        if self.rng.random() < chance and (what := event(self.rng)):
                            self.kills[what] += 1
                    if started % self.checkpoint_every == 0 and started < self.experiments:
                        self.check()
                time.sleep(0.05)
            self.check()
        finally:
            self.world.close()
        return not self.left and not self.failures() and not self.lost and not self.world.problems()

    def launch(self, injection_id: str) -> None:
        target = self.rng.choice(self.targets)
        peer = self.rng.choice([t for t in self.targets if t is not target] or [target])
        kind = self.rng.choice(KINDS)
        plan = {"reach": self.world.reach(target), "target": target.container_id, "id": injection_id,
                "fault": fault(kind, self.rng, self.world.peer(peer)), "hold_s": self.rng.uniform(*HOLD_S),
                "duration_s": self.rng.uniform(0.5, HOLD_S[1]) if self.rng.random() < DURATION_SHARE else None}
        process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--runner"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdin is not None
        process.stdin.write(json.dumps(plan))
        process.stdin.close()
        self.runners[injection_id] = Runner(injection_id, kind, target.container_id, process)

    def reap(self) -> None:
        for runner in [r for r in self.runners.values() if r.process.poll() is not None]:
            assert runner.process.stdout is not None
            events = [json.loads(line) for line in runner.process.stdout.read().splitlines() if line.startswith("{")]
            self.done.append((runner, events))
            del self.runners[runner.id]

    def kill_runner(self, rng: random.Random) -> str | None:
        # One that has had time to apply: killing a runner mid-Apply happens too, but is not the common case.
        alive = [r for r in self.runners.values() if r.process.poll() is None
                 and time.monotonic() - r.started > 1.5] or [r for r in self.runners.values() if r.process.poll() is None]
        if not alive:
            return None
        runner = rng.choice(alive)
        runner.process.send_signal(signal.SIGKILL)
        runner.killed_at = time.time()
        return "runner SIGKILL"

    def drain(self) -> None:
        """Wait for every runner to end, the world to settle and the daemons to hold nothing in force."""
        while self.runners:
            self.reap()
            time.sleep(0.1)
        self.world.settle()
        deadline = time.monotonic() + QUIET_TIMEOUT_S
        while self.world.live() and time.monotonic() < deadline:
            time.sleep(0.5)

    def check(self) -> None:
        self.drain()
        self.checkpoints += 1
        where = f"checkpoint {self.checkpoints}"
        self.left += [f"{where}: in force at a daemon: {live}" for live in self.world.live()]
        self.left += [f"{where}: live in the journal: {r.get('id')} ({r.get('kind')}, {r.get('state')})"
                      for r in self.world.records().values() if r.get("state") in LIVE]
        self.left += [f"{where}: {change}" for change in self.world.changed()]
        for target in list(self.targets):
            if not os.path.exists(f"/proc/{target.pid}"):  # no kind of the soak ends a target: say so, go on
                self.lost.append(f"{where}: {target.container_id} died")
                self.targets.remove(target)
                continue
            now = self.look(target)
            for aspect, value in now.items():
                if value != self.before[target.container_id][aspect]:
                    self.left.append(f"{where}: {target.container_id}: its {aspect} differs from before")
        self.left += [f"{where}: program left running: {line}" for line in self.programs()]

    def programs(self) -> list[str]:
        """The fault programs running in a target's network or pid namespace (queues, responders, proxies,
        stress-ng): others on the machine are not the soak's."""
        namespaces = set()
        for target in self.targets:
            for kind in ("net", "pid"):
                with contextlib.suppress(OSError):
                    namespaces.add(os.readlink(f"/proc/{target.pid}/ns/{kind}"))
        found = []
        listing = subprocess.run(["pgrep", "-af", "|".join(PROGRAMS)], capture_output=True, text=True).stdout
        for line in listing.splitlines():
            pid = line.split(" ", 1)[0]
            try:
                theirs = {os.readlink(f"/proc/{pid}/ns/{kind}") for kind in ("net", "pid")}
            except OSError:
                continue  # gone meanwhile
            if theirs & namespaces:
                found.append(line)
        return found

    # -- what happened ---------------------------------------------------------------------------------------

    def records(self) -> dict[str, dict[str, Any]]:
        """This run's injections' journal records, ended ones included (a daemon keeps them for an hour; a
        restarted daemon lists only what it adopted, the journal has the rest)."""
        return {i: r for i, r in self.world.records().items() if i.startswith(f"{self.run_id}-")}

    def failures(self) -> list[str]:
        """Recoveries that failed: a fault that may still be in force. (An injection ended FAILED on purpose,
        because its fault stopped early or could not be resumed, says so and is not one.)"""
        return [f"{record['id']} ({record['kind']}): {record['detail']}" for record in self.records().values()
                if record["state"] == "failed" and "recovery failed" in record["detail"]]


def containerd_pid(beside: int | str = "self") -> int | None:
    """The containerd in the mount namespace of process ``beside``: by default this one's, the machine's own
    (this host sees a kind node's containerd too); a kind node's init pid names that node's."""
    wanted = os.readlink(f"/proc/{beside}/ns/mnt")
    listed = subprocess.run(["pgrep", "-x", "containerd"], capture_output=True, text=True).stdout.split()
    for pid in listed:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/mnt") == wanted:
                return int(pid)
    return None


def recovery_path(record: dict[str, Any] | None, runner: Runner, events: list[dict[str, Any]]) -> str:
    refused = [e for e in events if e.get("event") == "refused"]
    if refused:
        detail = refused[0].get("detail", "")
        if "is paused" in detail:
            return "refused at apply: its target is paused (composition rule)"
        if "already" in detail:
            return "refused at apply: another fault holds the same port or clock"
        if "has no running task" in detail or "not running" in detail:
            return "refused at apply: its container was restarting (no running task)"
        if refused[0].get("code") in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            return f"refused at apply: {refused[0].get('code')} (containerd stalled?)"
        return f"refused at apply: {refused[0].get('code')} {detail[:60]}"
    if record is None:
        return "never applied (runner killed first)"
    detail = record["detail"]
    if record["state"] == "recovered":
        return "teardown (Recover)"
    if "no daemon watched" in detail or "interrupted while applying" in detail or "resumed at restart" in detail:
        return "adoption (a restarted daemon)"
    if "duration passed" in detail:
        return "duration"
    if "lease ran out" in detail:
        return "lease (runner gone)" if runner.killed_at else "lease"
    if "applying failed" in detail and "undone" in detail:
        return "undone: its Apply was cut off (runner killed mid-Apply)"
    if "stopped early" in detail:
        return "failed, as it should: its program ended with its target's task (a restart)"
    return f"other: {record['state']} {detail[:60]}"


def report(soak: Soak, seconds: float) -> list[Row]:
    records = soak.records()
    paths: collections.Counter[str] = collections.Counter()
    death_to_recovery = []
    for runner, events in soak.done:
        record = records.get(runner.id)
        paths[recovery_path(record, runner, events)] += 1
        if runner.killed_at and record and record.get("ended_at") and record["state"] == "expired":
            death_to_recovery.append(max(record["ended_at"] - runner.killed_at, 0.0))
    kinds = collections.Counter(runner.kind for runner, _ in soak.done)
    failures = soak.failures()
    rows = [Row("experiments", f"{len(soak.done)} ({len(kinds)} kinds, {len(soak.targets)} targets)",
                f"{soak.world.name} bed, seed {soak.seed}, {seconds:.0f} s"),
            *(Row(f"kills: {what}", str(count)) for what, count in sorted(soak.kills.items())),
            Row("faults left behind", str(len(soak.left)), f"{soak.checkpoints} checkpoints", goal="0",
                met=not soak.left),
            Row("recoveries that failed", str(len(failures)), goal="0", met=not failures),
            Row("targets that died", str(len(soak.lost)), goal="0", met=not soak.lost),
            *(Row(f"ended by: {path}", str(count)) for path, count in sorted(paths.items()))]
    if death_to_recovery:
        ordered = sorted(death_to_recovery)
        rows.append(Row("runner's death to recovery", f"p50 {statistics.median(ordered):.2f} s",
                        f"p99 {ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]:.2f} s, lease {LEASE_S} s"))
    return rows + soak.world.rows()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Run as root; exits 1 when a fault was left behind or a recovery failed.")
    parser.add_argument("--short", action="store_true", help=f"{SHORT} experiments (about 3 minutes), as .ci/run runs")
    parser.add_argument("--experiments", type=int, help=f"how many (default {FULL}; --short: {SHORT})")
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default: random, printed)")
    parser.add_argument("--pid-targets", type=int, default=4, help="local bed: process targets (default 4)")
    parser.add_argument("--container-targets", type=int, default=2, help="local bed: containerd targets (default 2)")
    parser.add_argument("--kind", action="store_true",
                        help="soak the kind bed (pytest-chaos-cluster up; daemons deployed) instead: busybox pods "
                             "as targets, the DaemonSet's daemons over mutual TLS; daemon pods deleted and their "
                             "containers SIGKILLed, node containerds stalled")
    parser.add_argument("--pods", type=int, default=4, help="--kind: busybox pod targets (default 4)")
    parser.add_argument("--kubeconfig", help="--kind: the cluster's (default: the kind bed's)")
    parser.add_argument("--runner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runner:
        return runner_main()
    if os.geteuid() != 0:
        parser.error("run as root: the daemon enters namespaces, the bed makes them")
    signal.signal(signal.SIGTERM, _terminated)  # SIGTERM too cleans up (the bed, the daemon)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    experiments = args.experiments or (SHORT if args.short else FULL)
    print(f"soak: {experiments} experiments, seed {seed} (again: --seed {seed})", file=sys.stderr, flush=True)
    begun = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="pytest-chaos-soak-")
    world: Any = None
    try:
        if args.kind:
            from benchmarks.soak_kind import KindWorld

            world = KindWorld(args.pods, args.kubeconfig)
        else:
            world = LocalWorld(workdir, args.pid_targets, args.container_targets)
        soak = Soak(world, experiments, seed, SHORT_CHECKPOINT_EVERY if args.short else CHECKPOINT_EVERY)
    except BaseException:
        if world is not None:
            world.close()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    with progress(soak):
        clean = soak.run()
    print(f"pytest-chaos soak{' (--short)' if args.short else ''}{' on the kind bed' if args.kind else ''}")
    print(machine())
    print(table(report(soak, time.monotonic() - begun)))
    for line in soak.left + [f"recovery failed: {f}" for f in soak.failures()] + soak.lost + world.problems():
        print(f"  {line}")
    if clean:
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    print(f"  kept for a look: {world.keep()}")
    return 1


def _terminated(signum: int, frame: object) -> None:
    """End as an ordinary run ends, cleaning up; a second SIGTERM (a wrapper passing its own on) must not cut
    that cleanup short, so it is ignored from here on."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(143)


@contextlib.contextmanager
def progress(soak: Soak) -> Iterator[None]:
    """A line every 15 s on stderr: long work shows it is moving."""
    import threading

    stop = threading.Event()

    def tell() -> None:
        while not stop.wait(15):
            if len(soak.done) < soak.experiments:
                print(f"soak: {len(soak.done)}/{soak.experiments} experiments done, {len(soak.runners)} running, "
                      f"kills {dict(soak.kills)}", file=sys.stderr, flush=True)
            else:
                print("soak: every experiment done; waiting for the daemons to serve and hold nothing, then "
                      "checking every target", file=sys.stderr, flush=True)

    thread = threading.Thread(target=tell, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


if __name__ == "__main__":
    sys.exit(main())
