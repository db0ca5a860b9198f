"""Median latency of HelloWorldChaos through the plugin, both sources, against running nsenter directly.

All run on the same target in the same process, interleaved round by round
so machine noise hits them alike. The plugin path is the one a marker takes:
selection by the local backend, the mode's pick, a gRPC call to the daemon on
its unix socket, PID resolution, then either ``source="ps"`` (the confine
helper runs ``sh -c "ps aux"`` inside the target, as the target) or
``source="proc"`` (the daemon reads the target's /proc, executing nothing).
The baselines are bare, unconfined probes run by hand on the same PID:

    nsenter -t PID -m -p -- sh -c 'ps aux'     (for source="ps")
    nsenter -t PID -m -p -- ps aux             (for source="proc")

Run as root:  python3 -m benchmarks.helloworld_latency [--rounds 50] [--quick]
Targets: a process isolated with unshare (pid://), a containerd container
and a Docker container; containerd and Docker must be running
(scripts/setup.sh starts them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from benchmarks.report import Row, ms, run_main
from benchmarks.timing import interleaved_medians
from pytest_chaos.backends.local import LocalBackend
from pytest_chaos.embedded import EmbeddedDaemon
from pytest_chaos.session import ChaosSession
from tests.support.targets import Targets, make_busybox_rootfs

PS_GOAL = 1.3  # ps through the plugin, at most this many times the bare nsenter
PROC_GOAL = 0.1  # proc through the plugin, at least ten times faster than the bare nsenter ps


def measure(session: ChaosSession, selector: dict, host_pid: int, rounds: int) -> dict[str, float]:
    specs = {source: session.spec(("helloworld",), {"selector": selector, "mode": "all", "source": source})
             for source in ("ps", "proc")}

    def through_plugin(source: str):
        def run() -> None:
            experiment = session.apply(specs[source])
            assert experiment.targets[0].processes[0].command == "sleep 3600"
            session.recover(experiment)
        return run

    def bare(*probe: str):
        def run() -> None:
            out = subprocess.run(["nsenter", "-t", str(host_pid), "-m", "-p", "--", *probe],
                                 capture_output=True, text=True, check=True).stdout
            assert "sleep 3600" in out
        return run

    return interleaved_medians({"ps": through_plugin("ps"), "proc": through_plugin("proc"),
                                "nsenter sh": bare("sh", "-c", "ps aux"), "nsenter ps": bare("ps", "aux")}, rounds)


def rows(quick: bool, rounds: int | None = None) -> list[Row]:
    if os.geteuid() != 0:
        raise SystemExit("run as root: nsenter needs it")
    rounds = rounds or (10 if quick else 50)
    daemon = EmbeddedDaemon(["--containerd-namespace", "*", "--allow-pid-targets"])
    backend = LocalBackend(daemon.ensure_started)
    session = ChaosSession(backend, seed=0)
    rootfs = tempfile.mkdtemp(prefix="bench-rootfs-")
    targets = Targets(make_busybox_rootfs(rootfs))
    measured = {}
    try:
        pid = targets.process("sleep", "3600")
        measured["pid://"] = measure(session, {"pids": [pid]}, pid, rounds)
        # The baselines get the PID for free; the plugin resolves it through the runtime.
        container_id = targets.containerd("sleep", "3600")
        tasks = subprocess.check_output(["ctr", "-n", targets.containerd_namespace, "tasks", "ls"], text=True)
        container_pid = int(next(line.split()[1] for line in tasks.splitlines() if line.startswith(container_id)))
        measured["containerd://"] = measure(session, {"containers": [container_id]}, container_pid, rounds)
        docker_id = targets.docker("sleep", "3600")
        docker_pid = json.loads(subprocess.check_output(["docker", "inspect", docker_id]))[0]["State"]["Pid"]
        measured["docker://"] = measure(session, {"containers": [docker_id]}, docker_pid, rounds)
    finally:
        session.close()
        daemon.stop()
        targets.close()
        shutil.rmtree(rootfs, ignore_errors=True)

    result = []
    for target, m in measured.items():
        ps_ratio, proc_ratio = m["ps"] / m["nsenter sh"], m["proc"] / m["nsenter ps"]
        result.append(Row(f"helloworld source=ps, one {target} target", ms(m["ps"]),
                          f"nsenter sh -c 'ps aux' {ms(m['nsenter sh'])}", ps_ratio, f"<= {PS_GOAL}x", ps_ratio <= PS_GOAL))
        result.append(Row(f"helloworld source=proc, one {target} target", ms(m["proc"]),
                          f"nsenter ps aux {ms(m['nsenter ps'])}", proc_ratio, f"<= {PROC_GOAL}x (10x faster)",
                          proc_ratio <= PROC_GOAL))
    return result


def main() -> int:
    return run_main(__doc__, "HelloWorldChaos latency, medians of interleaved rounds", rows, "fewer rounds",
                    ("--rounds", {"type": int, "help": "interleaved rounds (default 50; 10 with --quick)"}))


if __name__ == "__main__":
    sys.exit(main())
