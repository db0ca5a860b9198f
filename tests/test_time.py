"""time against real targets, each effect checked from outside the daemon: a long-running program in the target
writes what its clocks read every 0.2 s, and the test reads that file through /proc/<pid>/root and compares it
with its own clocks. A containerd container running Python, a pid:// Python process and a pid:// Go program;
the shift is seen within 2 s of apply and is gone after recovery, also when the daemon that applied it was
SIGKILLed and a successor on its journal recovered it. Apply and recover latency are printed, never asserted."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos_daemon.errors import FailedPrecondition
from pytest_chaos_daemon.faults import vdso

from tests.support.targets import CONTAINERD_NAMESPACE, container_init_pid, make_busybox_rootfs, require, run

# The helper is built, and the processes it patches are ptraced, as root.
pytestmark = pytest.mark.needs_root
PYTHON = "/usr/bin/python3"  # the node's Python: a container gets it by a read-only bind of /usr
PERIOD_S = 0.2
SEEN_WITHIN_S = 2.0  # the bound from apply (or recovery) to the program's clock reading shifted (or not)
TOLERANCE_S = 1.0  # a reading is up to a period old, and the test reads its own clock after it
HOURS_2, MINUTES_30 = -2 * 3600, 30 * 60
# Writes "<time.time()> <time.monotonic()>" every PERIOD_S, replacing the file whole; a thread beside it so
# that a multi-threaded process is what gets stopped. It waits with select's relative timeout: time.sleep
# sleeps until a CLOCK_MONOTONIC deadline it computes from the (shifted) vDSO reading, so with CLOCK_MONOTONIC
# shifted by +30m one sleep would last 30 minutes (docs/kinds/time.md).
PROBE = textwrap.dedent(f"""\
    import os, select, sys, threading, time
    threading.Thread(target=lambda: [select.select([], [], [], 0.05) for _ in iter(int, 1)], daemon=True).start()
    out = sys.argv[1]
    if len(sys.argv) > 2 and os.fork() == 0:  # a second process of the target, writing to argv[2]
        out = sys.argv[2]
    while True:
        with open(out + ".new", "w") as f:
            f.write(f"{{time.time()}} {{time.monotonic()}}\\n")
        os.replace(out + ".new", out)
        select.select([], [], [], {PERIOD_S})
""")
GO_PROBE = textwrap.dedent(f"""\
    package main

    import (
    \t"fmt"
    \t"os"
    \t"time"
    )

    func main() {{
    \tfor {{
    \t\tnow := time.Now()
    \t\tos.WriteFile(os.Args[1]+".new", []byte(fmt.Sprintf("%.6f 0\\n", float64(now.UnixNano())/1e9)), 0o644)
    \t\tos.Rename(os.Args[1]+".new", os.Args[1])
    \t\ttime.Sleep({int(PERIOD_S * 1000)} * time.Millisecond)
    \t}}
    }}
""")


@pytest.fixture(scope="module", autouse=True)
def _helper_built() -> None:
    """The source checkout's helper, as `python3 -m pytest_chaos_daemon.confinement.timeshift` builds it."""
    subprocess.run([sys.executable, "-m", "pytest_chaos_daemon.confinement.timeshift"], check=True,
                   capture_output=True, timeout=180)


@dataclasses.dataclass
class Probe:
    pid: int  # host pid of the program
    path: str  # its output file, as the program names it
    monotonic: bool = True  # it writes its CLOCK_MONOTONIC reading (the Go probe writes 0)

    def reading(self) -> tuple[float, float] | None:
        try:
            with open(f"/proc/{self.pid}/root{self.path}") as f:
                wall, mono = f.read().split()
            return float(wall), float(mono)
        except (OSError, ValueError):
            return None

    def skews(self) -> tuple[float, float] | None:
        """How far the program's last wall-clock and monotonic readings are from the test's own."""
        reading = self.reading()
        if reading is None:
            return None
        return reading[0] - time.time(), reading[1] - time.monotonic()

    def wait_skews(self, wall: float, mono: float | None = 0.0, within: float = SEEN_WITHIN_S) -> float:
        """Seconds until the program reads its clocks off by ``wall`` (and ``mono``, unless None); fails after
        ``within``."""
        start = time.monotonic()
        last = None
        while time.monotonic() - start < within:
            last = self.skews()
            if last is not None and abs(last[0] - wall) < TOLERANCE_S and (
                    mono is None or not self.monotonic or abs(last[1] - mono) < TOLERANCE_S):
                return time.monotonic() - start
            time.sleep(0.02)
        raise AssertionError(f"process {self.pid}: clocks off by {last} s (wall, monotonic), not ({wall}, {mono}) "
                             f"within {within} s")


@pytest.fixture
def python_container(targets, tmp_path: Path) -> tuple[str, Probe]:
    """A containerd container whose PID 1 is the probe, on the node's Python (read-only /usr)."""
    root = make_busybox_rootfs(tmp_path / "rootfs")
    for link in ("lib", "lib64"):
        os.symlink(f"usr/{link}", os.path.join(root, link))
    os.makedirs(os.path.join(root, "usr"))
    Path(root, "probe.py").write_text(PROBE)
    container_id = targets.containerd(PYTHON, "/probe.py", "/tmp/time.txt", "/tmp/child.txt", rootfs=root,
                                      mounts=("/usr",))
    probe = Probe(container_init_pid(container_id), "/tmp/time.txt")
    _wait_running(probe)
    return f"containerd://{container_id}", probe


def child_of(probe: Probe) -> Probe:
    """The probe's forked second process, read through the same /proc/<pid>/root."""
    return Probe(probe.pid, "/tmp/child.txt")


@pytest.fixture
def start_probe(tmp_path: Path) -> Iterator[Callable[..., Probe]]:
    """Start a probe program on the node (a pid:// target); killed after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*argv: str, monotonic: bool = True) -> Probe:
        out = str(tmp_path / f"time-{len(started)}.txt")
        process = subprocess.Popen([*argv, out])
        started.append(process)
        probe = Probe(process.pid, out, monotonic)
        _wait_running(probe)
        return probe

    yield start
    for process in started:
        process.kill()
        process.wait()


@pytest.fixture
def python_probe(start_probe, tmp_path: Path) -> Probe:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    return start_probe(PYTHON, str(script))


def _wait_running(probe: Probe) -> None:
    deadline = time.monotonic() + 15
    while probe.skews() is None:
        assert time.monotonic() < deadline, f"probe {probe.pid} wrote nothing"
        time.sleep(0.05)
    probe.wait_skews(0.0)


def apply(daemon, container_id: str, offset_s: float, clock_ids: tuple[str, ...] = (),
          injection_id: str | None = None) -> tuple[pb.ApplyResponse, float]:
    seconds = int(offset_s)
    request = pb.ApplyRequest(container_id=container_id, injection=pb.Injection(id=injection_id or uuid.uuid4().hex),
                              time=pb.Time(time_offset=Duration(seconds=seconds, nanos=int((offset_s - seconds) * 1e9)),
                                           clock_ids=list(clock_ids)))
    start = time.monotonic()
    reply = daemon.stub.Apply(request, timeout=60)
    return reply, time.monotonic() - start


def recover(daemon, injection_id: str) -> tuple[pb.InjectionStatus, float]:
    start = time.monotonic()
    [status] = daemon.stub.Recover(pb.RecoverRequest(injection_ids=[injection_id]), timeout=60).injections
    return status, time.monotonic() - start


def assert_nothing_left(probe: Probe) -> None:
    """The vDSO holds its own entries again (a new plan finds no jump), and no helper runs."""
    vdso.read_layout(probe.pid)
    helpers = subprocess.run(["pgrep", "-f", "pytest-chaos-timeshift"], capture_output=True, text=True).stdout.split()
    assert not helpers, f"timeshift helpers left running: {helpers}"


def test_a_container_sees_a_negative_offset_within_2s_processes_started_later_do_not_and_recovery_undoes_it(
        daemon, python_container):
    container_id, probe = python_container
    reply, apply_s = apply(daemon, container_id, HOURS_2)
    assert reply.status.state == pb.InjectionStatus.ACTIVE
    # Both processes of the container, as it sees them: PID 1 and its child.
    assert len(reply.processes) == 2 and reply.processes[0].pid == 1, reply.processes
    seen_s = probe.wait_skews(HOURS_2, 0.0)  # CLOCK_MONOTONIC was not asked for: unshifted
    child_of(probe).wait_skews(HOURS_2, 0.0)

    # A process started in the target after apply gets a vDSO of its own: unaffected, as documented.
    bare = container_id.split("://", 1)[1]
    later = run("ctr", "-n", CONTAINERD_NAMESPACE, "tasks", "exec", "--exec-id", f"later-{uuid.uuid4().hex[:8]}",
                bare, PYTHON, "-c", "import time; print(time.time())").stdout
    assert abs(float(later) - time.time()) < TOLERANCE_S + 1, later
    probe.wait_skews(HOURS_2, 0.0)  # while the first still is shifted

    status, recover_s = recover(daemon, reply.status.injection_id)
    assert status.state == pb.InjectionStatus.RECOVERED, status.detail
    assert status.detail == "put back the vDSO clocks of 2 process(es)", status.detail
    back_s = probe.wait_skews(0.0, 0.0)
    child_of(probe).wait_skews(0.0, 0.0)
    assert_nothing_left(probe)
    print(f"\ntime, containerd target: apply {apply_s * 1000:.1f} ms, shift seen {seen_s:.2f} s after apply; "
          f"recover {recover_s * 1000:.1f} ms, back {back_s:.2f} s after recovery")


def test_a_pid_target_sees_a_positive_offset_on_the_clocks_asked_for_only(daemon, python_probe):
    # CLOCK_MONOTONIC alone: the wall clock stays.
    reply, apply_s = apply(daemon, f"pid://{python_probe.pid}", MINUTES_30, ("CLOCK_MONOTONIC",))
    python_probe.wait_skews(0.0, MINUTES_30)
    status, recover_s = recover(daemon, reply.status.injection_id)
    assert status.state == pb.InjectionStatus.RECOVERED, status.detail
    python_probe.wait_skews(0.0, 0.0)
    print(f"\ntime, pid target, CLOCK_MONOTONIC: apply {apply_s * 1000:.1f} ms, recover {recover_s * 1000:.1f} ms")

    # The default, CLOCK_REALTIME: monotonic stays. A second fault on the same process after the first ended.
    reply, _ = apply(daemon, f"pid://{python_probe.pid}", MINUTES_30)
    python_probe.wait_skews(MINUTES_30, 0.0)
    # Both at once.
    status, _ = recover(daemon, reply.status.injection_id)
    assert status.state == pb.InjectionStatus.RECOVERED, status.detail
    reply, _ = apply(daemon, f"pid://{python_probe.pid}", -90.5, ("CLOCK_REALTIME", "CLOCK_MONOTONIC"))
    python_probe.wait_skews(-90.5, -90.5)
    status, _ = recover(daemon, reply.status.injection_id)
    assert status.state == pb.InjectionStatus.RECOVERED, status.detail
    python_probe.wait_skews(0.0, 0.0)
    assert_nothing_left(python_probe)


def test_a_go_programs_time_now_is_shifted_through_the_vdso(daemon, start_probe, tmp_path: Path):
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    require(go is not None, "Go (setup.sh installs it in /usr/local/go)")
    assert go is not None
    (tmp_path / "probe.go").write_text(GO_PROBE)
    subprocess.run([go, "build", "-o", str(tmp_path / "probe"), str(tmp_path / "probe.go")], check=True,
                   capture_output=True, timeout=300, env={**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "off",
                                                          "GOCACHE": str(tmp_path / "go-cache")})
    probe = start_probe(str(tmp_path / "probe"), monotonic=False)
    reply, apply_s = apply(daemon, f"pid://{probe.pid}", HOURS_2)
    probe.wait_skews(HOURS_2, None)
    status, recover_s = recover(daemon, reply.status.injection_id)
    assert status.state == pb.InjectionStatus.RECOVERED, status.detail
    probe.wait_skews(0.0, None)
    print(f"\ntime, Go program (pid target, {len(os.listdir(f'/proc/{probe.pid}/task'))} threads): "
          f"apply {apply_s * 1000:.1f} ms, recover {recover_s * 1000:.1f} ms")


def test_a_daemon_sigkilled_with_the_fault_in_force_leaves_it_to_a_successor_on_its_journal_which_recovers_it(
        start_daemon, python_probe, tmp_path: Path):
    state = str(tmp_path / "state")
    first = start_daemon("--allow-pid-targets", "--state-dir", state)
    reply, _ = apply(first, f"pid://{python_probe.pid}", HOURS_2, injection_id="outlives-its-daemon")
    python_probe.wait_skews(HOURS_2, 0.0)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()

    second = start_daemon("--allow-pid-targets", "--state-dir", state)
    python_probe.wait_skews(HOURS_2, 0.0)  # the jumps live in the target: still shifted
    status, recover_s = recover(second, "outlives-its-daemon")
    assert status.state == pb.InjectionStatus.RECOVERED, status.detail
    assert status.detail.startswith("put back the vDSO clocks of 1 process"), status.detail
    back_s = python_probe.wait_skews(0.0, 0.0)
    assert_nothing_left(python_probe)
    # Exactly once: asked again, it says how it ended and writes nothing.
    again, _ = recover(second, "outlives-its-daemon")
    assert again.state == pb.InjectionStatus.RECOVERED and again.detail == status.detail
    print(f"\ntime, recovered by the successor of a SIGKILLed daemon: recover {recover_s * 1000:.1f} ms, "
          f"back {back_s:.2f} s later")


def test_a_duration_ends_the_shift_by_itself(daemon, python_probe):
    request = pb.ApplyRequest(container_id=f"pid://{python_probe.pid}", injection=pb.Injection(id=uuid.uuid4().hex),
                              time=pb.Time(time_offset=Duration(seconds=HOURS_2)), duration=Duration(seconds=2))
    reply = daemon.stub.Apply(request, timeout=60)
    python_probe.wait_skews(HOURS_2, 0.0)
    python_probe.wait_skews(0.0, 0.0, within=2 + 3 + SEEN_WITHIN_S)  # the daemon recovers at 2 s, checking each second
    [status] = daemon.stub.ListInjections(pb.ListInjectionsRequest(include_ended=True), timeout=30).injections
    assert status.injection_id == reply.status.injection_id and status.state == pb.InjectionStatus.EXPIRED, status
    assert "put back the vDSO clocks of 1 process" in status.detail, status.detail


@pytest.mark.parametrize(("fault", "words"), [
    (pb.Time(), "time.time_offset is required"),
    (pb.Time(time_offset=Duration(seconds=0)), "other than zero"),
    (pb.Time(time_offset=Duration(seconds=-1, nanos=5)), "of the seconds' sign"),
    (pb.Time(time_offset=Duration(seconds=10**11)), "at most 100 years"),
    (pb.Time(time_offset=Duration(seconds=1), clock_ids=["CLOCK_TAI"]), "'CLOCK_TAI' not accepted; accepted: "
                                                                        "CLOCK_REALTIME, CLOCK_MONOTONIC"),
])
def test_the_daemon_refuses_a_bad_request_naming_the_field(daemon, python_probe, fault, words):
    request = pb.ApplyRequest(container_id=f"pid://{python_probe.pid}", injection=pb.Injection(id=uuid.uuid4().hex),
                              time=fault)
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Apply(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in info.value.details(), info.value.details()
    python_probe.wait_skews(0.0, 0.0)


def test_a_second_time_fault_on_a_shifted_process_is_refused_and_the_first_stays(daemon, python_probe):
    reply, _ = apply(daemon, f"pid://{python_probe.pid}", HOURS_2)
    python_probe.wait_skews(HOURS_2, 0.0)
    with pytest.raises(grpc.RpcError) as info:
        apply(daemon, f"pid://{python_probe.pid}", MINUTES_30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already has its clocks shifted" in info.value.details(), info.value.details()
    python_probe.wait_skews(HOURS_2, 0.0)
    status, _ = recover(daemon, reply.status.injection_id)
    assert status.state == pb.InjectionStatus.RECOVERED, status.detail
    python_probe.wait_skews(0.0, 0.0)


def test_a_paused_container_is_refused_at_once_and_time_applied_before_the_pause_recovers_after_it(
        daemon, python_container):
    container_id, probe = python_container
    pause = pb.ApplyRequest(container_id=container_id, injection=pb.Injection(id="pause-first"),
                            container_pause=pb.ContainerPause())
    daemon.stub.Apply(pause, timeout=60)
    with pytest.raises(grpc.RpcError) as info:
        apply(daemon, container_id, HOURS_2)
    # Refused by its plan, at once, not by the helper's 20 s limit on stopping a process.
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is paused (frozen by the cgroup v" in info.value.details(), info.value.details()
    [thawed] = daemon.stub.Recover(pb.RecoverRequest(injection_ids=["pause-first"]), timeout=60).injections
    assert thawed.state == pb.InjectionStatus.RECOVERED, thawed.detail
    # In the other order both apply, and recovering the pause first (teardown's order) lets time's recovery work.
    reply, _ = apply(daemon, container_id, HOURS_2, injection_id="time-first")
    probe.wait_skews(HOURS_2, 0.0)
    daemon.stub.Apply(pb.ApplyRequest(container_id=container_id, injection=pb.Injection(id="pause-second"),
                                      container_pause=pb.ContainerPause()), timeout=60)
    daemon.stub.Recover(pb.RecoverRequest(injection_ids=["pause-second"]), timeout=60)
    status, _ = recover(daemon, "time-first")
    assert status.state == pb.InjectionStatus.RECOVERED, status.detail
    probe.wait_skews(0.0, 0.0)
    assert_nothing_left(probe)


def test_a_target_that_ended_counts_as_recovered_saying_so(daemon, start_probe, tmp_path: Path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    probe = start_probe(PYTHON, str(script))
    reply, _ = apply(daemon, f"pid://{probe.pid}", HOURS_2)
    probe.wait_skews(HOURS_2, 0.0)
    os.kill(probe.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(probe.pid, 0)
    status, _ = recover(daemon, reply.status.injection_id)
    assert status.state == pb.InjectionStatus.RECOVERED, status.detail
    assert status.detail.startswith("nothing to put back"), status.detail


def _own_vdso() -> bytes:
    """This process's vDSO image, as the daemon reads a target's."""
    with open("/proc/self/maps") as f:
        low, high = next(line.split()[0] for line in f if line.rstrip().endswith("[vdso]")).split("-")
    with open("/proc/self/mem", "rb", buffering=0) as mem:
        mem.seek(int(low, 16))
        return mem.read(int(high, 16) - int(low, 16))


@pytest.mark.parametrize(("change", "words"), [
    (lambda image: image[:4] + b"\x01" + image[5:18] + (3).to_bytes(2, "little") + image[20:], "a 32-bit i386 vDSO"),
    (lambda image: image[:18] + (183).to_bytes(2, "little") + image[20:], "a 64-bit aarch64 vDSO"),
    (lambda image: b"\0" * len(image), "not an ELF image"),
    (lambda image: image.replace(b"__vdso_gettimeofday", b"__vdso_gettimeofdaX"), "has no __vdso_gettimeofday"),
])
def test_a_vdso_of_another_architecture_or_layout_is_refused_naming_it(change, words):
    """The node's own vDSO image, changed as another architecture's or layout's would be."""
    assert vdso._entries(_own_vdso(), 1234)  # as it is: handled
    with pytest.raises(FailedPrecondition) as info:
        vdso._entries(change(_own_vdso()), 1234)
    assert words in info.value.message and "process 1234" in info.value.message, info.value.message


def test_the_marker_is_checked_at_collection_naming_the_field_and_what_it_accepts(pytester: pytest.Pytester):
    pytester.makepyfile(test_user="""
        import pytest

        @pytest.mark.chaos("time", selector={"pids": [1]}, time_offset="2 hours")
        def test_offset():
            raise AssertionError("must not run")

        @pytest.mark.chaos("time", selector={"pids": [1]}, time_offset="-2h", clock_ids=["CLOCK_TAI"])
        def test_clock():
            raise AssertionError("must not run")
    """)
    result = pytester.runpytest_subprocess("-p", "chaos")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "*test_user.py::test_offset: @pytest.mark.chaos time_offset: must be a signed duration such as '-2h', "
        "'+30m', '10s'*got '2 hours'",
        "*test_user.py::test_clock: @pytest.mark.chaos clock_ids: 'CLOCK_TAI' is not accepted; accepted: "
        "CLOCK_REALTIME, CLOCK_MONOTONIC*",
    ])
    assert "must not run" not in result.stdout.str()
