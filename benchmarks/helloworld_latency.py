"""Median latency of HelloWorldChaos through the plugin, both sources, against running nsenter directly.

All run on the same target in the same process, interleaved round by round
so machine noise hits them alike. The plugin path is the one a marker takes:
selection by the local backend, the mode's pick, a gRPC call to the daemon on
its unix socket, PID resolution, then either ``source="ps"`` (the confine
helper runs ``sh -c "ps aux"`` inside the target, as the target) or
``source="proc"`` (the daemon reads the target's /proc, executing nothing).
The baseline is a bare, unconfined probe run by hand:

    nsenter -t PID -m -p -- sh -c 'ps aux'

Run as root:  python3 -m benchmarks.helloworld_latency [--rounds 50]
Targets: a process isolated with unshare (pid://), and a containerd container
(containerd://); containerd must be running (scripts/setup.sh starts it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

# The repository's test fixtures start the same real targets the tests use.
from benchmarks.timing import interleaved_medians
from pytest_chaos.backends.local import LocalBackend
from pytest_chaos.embedded import EmbeddedDaemon
from pytest_chaos.session import ChaosSession
from tests.support.targets import Targets, make_busybox_rootfs


def measure(session: ChaosSession, selector: dict, host_pid: int, rounds: int) -> dict[str, float]:
    specs = {source: session.spec(("helloworld",), {"selector": selector, "mode": "all", "source": source})
             for source in ("ps", "proc")}

    def through_plugin(source: str):
        def run() -> None:
            experiment = session.apply(specs[source])
            assert experiment.targets[0].processes[0].command == "sleep 3600"
            session.recover(experiment)
        return run

    def direct() -> None:
        argv = ["nsenter", "-t", str(host_pid), "-m", "-p", "--", "sh", "-c", "ps aux"]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        assert "sleep 3600" in out

    return interleaved_medians({"ps": through_plugin("ps"), "proc": through_plugin("proc"), "nsenter": direct}, rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: nsenter needs it")

    daemon = EmbeddedDaemon(["--containerd-namespace", "*", "--allow-pid-targets"])
    backend = LocalBackend(daemon.ensure_started, "/run/containerd/containerd.sock", ["*"], "/var/run/docker.sock")
    session = ChaosSession(backend, seed=0)
    rootfs = tempfile.mkdtemp(prefix="bench-rootfs-")
    targets = Targets(make_busybox_rootfs(rootfs))
    rows = []
    try:
        pid = targets.process("sleep", "3600")
        rows.append(("pid://", measure(session, {"pids": [pid]}, pid, args.rounds)))
        container_id = targets.containerd("sleep", "3600")
        # The baseline gets the PID for free; the plugin resolves it through containerd every time.
        tasks = subprocess.check_output(["ctr", "-n", targets.containerd_namespace, "tasks", "ls"], text=True)
        container_pid = int(next(line.split()[1] for line in tasks.splitlines() if line.startswith(container_id)))
        rows.append(("containerd://", measure(session, {"containers": [container_id]}, container_pid, args.rounds)))
    finally:
        session.close()
        daemon.stop()
        targets.close()
        shutil.rmtree(rootfs, ignore_errors=True)

    print(f"HelloWorldChaos median latency over {args.rounds} interleaved rounds (python {sys.version.split()[0]})")
    print(f"{'target':<15}{'ps (ms)':>10}{'proc (ms)':>11}{'nsenter (ms)':>14}{'ps/nsenter':>12}{'proc/nsenter':>14}"
          f"{'proc/ps':>9}")
    for target, m in rows:
        print(f"{target:<15}{m['ps'] * 1000:>10.2f}{m['proc'] * 1000:>11.2f}{m['nsenter'] * 1000:>14.2f}"
              f"{m['ps'] / m['nsenter']:>12.2f}{m['proc'] / m['nsenter']:>14.2f}{m['proc'] / m['ps']:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
