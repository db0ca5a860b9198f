"""Median latency of HelloWorldChaos through the plugin, against running nsenter directly.

Both run on the same target in the same process, interleaved round by round
so machine noise hits both alike. The plugin path is the one a marker takes:
selection by the local backend, the mode's pick, a gRPC call to the daemon on
its unix socket, PID resolution, nsenter, parsing. The baseline is the bare
command the daemon ends up running:

    nsenter -t PID -m -p -- sh -c 'ps aux'

Run as root:  python benchmarks/helloworld_latency.py [--rounds 50]
Targets: a process isolated with unshare (pid://), and a containerd container
(containerd://); containerd must be running (scripts/setup.sh starts it).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from pytest_chaos.backends.local import LocalBackend
from pytest_chaos.embedded import EmbeddedDaemon
from pytest_chaos.session import ChaosSession

# The repository's test fixtures start the same real targets the tests use.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from conftest import Targets, make_busybox_rootfs  # noqa: E402
from timing import interleaved_medians  # noqa: E402


def measure(session: ChaosSession, selector: dict, host_pid: int, rounds: int) -> tuple[float, float]:
    spec = session.spec(("helloworld",), {"selector": selector, "mode": "all"})

    def through_plugin() -> None:
        experiment = session.apply(spec)
        assert experiment.targets[0].processes[0].command == "sleep 3600"
        session.recover(experiment)

    def direct() -> None:
        argv = ["nsenter", "-t", str(host_pid), "-m", "-p", "--", "sh", "-c", "ps aux"]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        assert "sleep 3600" in out

    medians = interleaved_medians({"plugin": through_plugin, "direct": direct}, rounds)
    return medians["plugin"], medians["direct"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: nsenter needs it")

    daemon = EmbeddedDaemon(["--containerd-namespace", "*"])
    backend = LocalBackend(daemon.ensure_started, "/run/containerd/containerd.sock", ["*"], "/var/run/docker.sock")
    session = ChaosSession(backend, seed=0)
    rootfs = tempfile.mkdtemp(prefix="bench-rootfs-")
    targets = Targets(make_busybox_rootfs(rootfs))
    rows = []
    try:
        pid = targets.process("sleep", "3600")
        rows.append(("pid://", *measure(session, {"pids": [pid]}, pid, args.rounds)))
        container_id = targets.containerd("sleep", "3600")
        # The baseline gets the PID for free; the plugin resolves it through containerd every time.
        tasks = subprocess.check_output(["ctr", "-n", targets.containerd_namespace, "tasks", "ls"], text=True)
        container_pid = int(next(line.split()[1] for line in tasks.splitlines() if line.startswith(container_id)))
        rows.append(("containerd://", *measure(session, {"containers": [container_id]}, container_pid, args.rounds)))
    finally:
        session.close()
        daemon.stop()
        targets.close()
        shutil.rmtree(rootfs, ignore_errors=True)

    print(f"HelloWorldChaos median latency over {args.rounds} interleaved rounds (python {sys.version.split()[0]})")
    print(f"{'target':<15}{'plugin (ms)':>12}{'nsenter (ms)':>14}{'ratio':>8}")
    for target, plugin_s, direct_s in rows:
        print(f"{target:<15}{plugin_s * 1000:>12.2f}{direct_s * 1000:>14.2f}{plugin_s / direct_s:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
