"""A daemon placed as a DaemonSet pod is on a cgroup v2 node works in the node's cgroup namespace.

Kubernetes gives such a pod's container a private cgroup namespace rooted at
its own cgroup, even with hostPID: every target's cgroup then reads ``/../..``
from inside it. The daemon enters the cgroup namespace of PID 1 of its pid
namespace at start. This machine's own PID 1 may not be inspected, so the test
makes a node of its own: a pid namespace whose PID 1 (in this test's cgroup
namespace) starts a target and the daemon, the daemon placed by
``tests/support/pod_placement.py``. The VM lane runs the daemon tests this way
against the guest's real init (``PYTEST_CHAOS_TEST_DAEMON_PLACEMENT=pod``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import grpc
import pytest
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2_grpc as pb_grpc

from tests.support import pod_placement
from tests.support.targets import wait_for

pytestmark = pytest.mark.needs_root

PLACEMENT = pod_placement.__file__
# PID 1 of the test's node: a target, then the daemon in its pod placement; the target's pid on the first line.
NODE_INIT = """
import subprocess, sys
placement, cgroup, socket, state, log = sys.argv[1:]
target = subprocess.Popen(["sleep", "4731"])
print(target.pid, flush=True)
with open(log, "wb") as out:
    daemon = subprocess.Popen([sys.executable, placement, "--cgroup", cgroup, "--", sys.executable, "-m",
                               "pytest_chaos_daemon", "--listen", f"unix://{socket}", "--allow-pid-targets",
                               "--state-dir", state, "--log-level", "debug"], stdout=out, stderr=out)
daemon.wait()
"""


@pytest.fixture
def node(tmp_path):
    """(the target's pid in the node, a stub for the node's daemon, the daemon's log path)."""
    cgroup = f"pytest-chaos-pod-{os.getpid()}"
    socket, log = tmp_path / "daemon.sock", tmp_path / "daemon.log"
    init = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--", sys.executable, "-c", NODE_INIT,
                             PLACEMENT, cgroup, str(socket), str(tmp_path / "state"), str(log)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert init.stdout is not None
        target = int(init.stdout.readline())
        wait_for(lambda: log.exists() and '"serving"' in log.read_text(), "the node's daemon to serve", 30)
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            yield target, pb_grpc.ChaosDaemonStub(channel), log
    finally:
        init.send_signal(signal.SIGKILL)  # unshare's child, the node's PID 1, dies with it, and its namespace
        init.wait()
        pod_placement.remove(cgroup)  # once the node's processes have left it


def serving_line(log) -> dict:
    return next(json.loads(line) for line in log.read_text().splitlines() if '"serving"' in line)


def test_a_pod_placed_daemon_enters_the_nodes_cgroup_namespace_and_runs_ps_inside_the_target(node):
    target, stub, log = node
    started = serving_line(log)
    assert started["cgroup_namespace"] == "entered PID 1's", started
    reply = stub.ExecHelloWorldChaos(pb.ExecHelloWorldRequest(container_id=f"pid://{target}"), timeout=60)
    assert "sleep 4731" in [p.command for p in reply.processes], reply.output
    assert reply.status.cgroup == started["cgroup"]


def test_a_pod_placed_daemon_stresses_a_target_within_the_targets_cgroups(node):
    target, stub, log = node
    request = pb.ApplyRequest(container_id=f"pid://{target}", injection=pb.Injection(id="pod-stress"),
                              stress=pb.Stress(cpu=pb.Stress.Cpu(workers=1, load=10)))
    assert stub.Apply(request, timeout=60).status.state == pb.InjectionStatus.ACTIVE
    [status] = stub.Recover(pb.RecoverRequest(injection_ids=["pod-stress"]), timeout=60).injections
    assert status.state == pb.InjectionStatus.RECOVERED, status.detail
    assert status.detail.startswith("stopped stress-ng"), status.detail
