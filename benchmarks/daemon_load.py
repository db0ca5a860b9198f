"""The daemon's memory under sustained load: many lasting faults in force at once, renewed, for a while.

Targets are processes on the tests' network bed (tests/support/network_bed.py),
each in a network namespace of its own. One daemon (started as the plugin
starts its own) gets, on every target, a network-delay (the packet queue here,
or netem where the kernel has it), a dns fault (its responder), and a
container-pause (SIGSTOP: pid:// targets); a few targets get a stress too.
They stay in force, their leases renewed every second as the plugin renews
them, while a thread samples the daemon's VmRSS, and the summed VmRSS of the
programs the faults left running (queues, responders, stress-ng), every
10 ms. Then every fault is recovered, and the daemon's RSS read again.

The figures size the DaemonSet's memory limit (daemon/deploy/daemonset.yaml):
the daemon's own cgroup holds the daemon and its short-lived probes; the
programs that serve a fault run in the target's cgroups, so the target pays.

Run as root:  python3 benchmarks/daemon_load.py [--quick]
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: the repository root is the import root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grpc  # noqa: E402

from benchmarks.daemon_memory import Sampler, daemon_pid, mb, status_kb  # noqa: E402
from benchmarks.plugin_overhead import started_daemon  # noqa: E402
from benchmarks.report import Row, run_main  # noqa: E402
from pytest_chaos.api.v1 import chaos_daemon_pb2 as pb  # noqa: E402
from pytest_chaos.api.v1 import chaos_daemon_pb2_grpc as pb_grpc  # noqa: E402
from tests.support.network_bed import NetworkBed  # noqa: E402

TARGETS, QUICK_TARGETS = 40, 8
STRESSED = 4
HOLD_S, QUICK_HOLD_S = 30.0, 8.0
LEASE_S = 10
LIMIT_MB = 256  # the DaemonSet's memory limit, which these figures must stay well within


def faults(target_id: str, index: int) -> list[tuple[str, pb.ApplyRequest]]:
    """The lasting faults one target gets: (injection id, request)."""
    def request(kind: str, **fault: object) -> tuple[str, pb.ApplyRequest]:
        injection_id = f"load-{kind}-{index}"
        message = pb.ApplyRequest(container_id=target_id, injection=pb.Injection(id=injection_id), **fault)
        message.injection.lease.FromSeconds(LEASE_S)
        return injection_id, message

    chosen = [request("delay", network_delay=pb.NetworkDelay(latency={"nanos": 20_000_000})),
              request("dns", dns=pb.Dns(action=pb.Dns.ACTION_ERROR, patterns=["example.*"]))]
    if index < STRESSED:  # before the pause: stress on a paused target is refused (docs/lifecycle.md)
        chosen.append(request("stress", stress=pb.Stress(memory=pb.Stress.Memory(workers=1, size="16MB"))))
    chosen.append(request("pause", container_pause=pb.ContainerPause()))
    return chosen


def rows(quick: bool) -> list[Row]:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the daemon enters other processes' namespaces")
    count, hold_s = (QUICK_TARGETS, QUICK_HOLD_S) if quick else (TARGETS, HOLD_S)
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-daemon-load-"))
        bed = stack.enter_context(NetworkBed())
        targets = [bed.process(resolv_conf="nameserver 10.232.255.1\n") for _ in range(count)]
        daemon = stack.enter_context(started_daemon(os.path.join(work, "state")))
        pid = daemon_pid(daemon.address)
        stub = pb_grpc.ChaosDaemonStub(stack.enter_context(grpc.insecure_channel(daemon.address)))
        stub.ListInjections(pb.ListInjectionsRequest(), timeout=30)
        idle_kb = status_kb(pid, "VmRSS")
        applied: list[str] = []
        with Sampler(pid).running() as sampler:
            try:
                started = time.monotonic()
                for index, target in enumerate(targets):
                    for injection_id, request in faults(target.container_id, index):
                        stub.Apply(request, timeout=120)
                        applied.append(injection_id)
                apply_s = time.monotonic() - started
                held_until = time.monotonic() + hold_s
                while time.monotonic() < held_until:
                    statuses = stub.Renew(pb.RenewRequest(injection_ids=applied), timeout=30).injections
                    ended = [s for s in statuses if s.state != pb.InjectionStatus.ACTIVE]
                    if ended:
                        raise AssertionError(f"{len(ended)} faults ended under load: {ended[0]}")
                    time.sleep(1.0)
            finally:
                recovered = stub.Recover(pb.RecoverRequest(injection_ids=applied), timeout=300).injections
        failed = [s for s in recovered if s.state != pb.InjectionStatus.RECOVERED]
        if failed:
            raise AssertionError(f"{len(failed)} recoveries failed: {failed[0]}")
        time.sleep(1.0)
        after_kb, hwm_kb = status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM")
    per_fault_kb = (sampler.daemon_kb - idle_kb) / len(applied)
    return [
        Row(f"lasting faults in force at once ({count} targets: delay, dns, pause each; stress on {STRESSED})",
            f"{len(applied)}", f"applied in {apply_s:.1f} s, held {hold_s:g} s, renewed every 1 s"),
        Row("daemon RSS before", mb(idle_kb)),
        Row("daemon RSS peak while they are in force (sampled every 10 ms)", mb(sampler.daemon_kb), f"before {mb(idle_kb)}",
            sampler.daemon_kb / idle_kb if idle_kb else None, f"<= {LIMIT_MB} MB (the DaemonSet's limit)",
            sampler.daemon_kb <= LIMIT_MB * 1024),
        Row("  the daemon's own cost per lasting fault", f"{per_fault_kb:.0f} kB"),
        Row("  VmHWM at the end (whole life)", mb(hwm_kb)),
        Row(f"  the faults' programs at peak (summed; at most {sampler.most_children} processes)", mb(sampler.children_kb)),
        Row("daemon RSS after recovering them all", mb(after_kb), f"before {mb(idle_kb)}",
            after_kb / idle_kb if idle_kb else None),
    ]


if __name__ == "__main__":
    sys.exit(run_main(__doc__, "Daemon memory under many lasting faults", rows,
                      f"{QUICK_TARGETS} targets held {QUICK_HOLD_S:g} s instead of {TARGETS} for {HOLD_S:g} s"))
