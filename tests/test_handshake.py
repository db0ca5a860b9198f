"""The version handshake: a daemon says what it is (GetInfo), and the plugin refuses one that lacks what a test needs.

Real daemons over real gRPC: the daemon of this tree, checked against the
machine from outside; a real older daemon, the daemon package of a commit that
predates GetInfo, extracted from git; and a small stand-in server that answers
GetInfo as a later release's older daemon would, lacking one field.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import tomllib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from pytest_chaos_daemon.confinement import confine

from pytest_chaos.api.contract import field_paths
from pytest_chaos.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos.api.v1 import chaos_daemon_pb2_grpc as pb_grpc
from pytest_chaos.api.version import VERSION
from pytest_chaos.kinds import KINDS
from tests.support.targets import require

ROOT = Path(__file__).resolve().parents[1]
# The last commit before GetInfo: its daemon is a real pytest-chaos-daemon 0.2.0 without the handshake.
BEFORE_HANDSHAKE = "4c73eae"


def get_info(daemon) -> pb.GetInfoResponse:
    reply: pb.GetInfoResponse = daemon.stub.GetInfo(pb.GetInfoRequest(), timeout=30)
    return reply


def cgroup_layout_from_mounts() -> str:
    """The node's layout as its mounts show it: v1 hierarchies with controllers, a cgroup2 mount, or both."""
    with open("/proc/cgroups") as f:
        controllers = {line.split()[0] for line in f if not line.startswith("#")}
    v1 = v2 = False
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fstype, _source, options = line.split(" - ", 1)[1].split()[:3]
            v2 |= fstype == "cgroup2"
            v1 |= fstype == "cgroup" and bool(controllers & set(options.split(",")))
    return "cgroup v1 (hybrid)" if v1 and v2 else "cgroup v1" if v1 else "cgroup v2"


def v1_freezer_mounted() -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(" - cgroup " in line and "freezer" in line.split()[-1].split(",") for line in f)


def netem_works() -> bool:
    """Whether this kernel takes a netem qdisc, tried as the daemon tries it: in a network namespace of its own."""
    require(shutil.which("tc") is not None and shutil.which("unshare") is not None, "tc and unshare")
    if modprobe := shutil.which("modprobe"):
        subprocess.run([modprobe, "-q", "sch_netem"], capture_output=True)
    tried = subprocess.run(["unshare", "--net", "--", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                           capture_output=True)
    return tried.returncode == 0


def accepts_connections(path: str) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


# --- GetInfo of this tree's daemon, against the machine ------------------------------------------


def test_get_info_says_what_the_daemon_is_and_what_it_found_on_this_node(start_daemon):
    daemon = start_daemon("--allow-pid-targets", "--network-emulation=queue")
    info = get_info(daemon)
    assert info.version == VERSION
    assert info.kernel == os.uname().release
    assert info.cgroup == cgroup_layout_from_mounts()
    assert info.pid_targets
    # --network-emulation=queue: netem is not used, and the netem kinds say the packet queue makes them.
    assert not info.netem and "--network-emulation=queue" in info.netem_missing
    kinds = {k.kind: k for k in info.kinds}
    for name in ("network-loss", "network-delay", "network-duplicate", "network-corrupt"):
        assert [m.split(" (")[0] for m in kinds[name].mechanisms] == ["packet queue"], kinds[name].mechanisms
    pause = kinds["container-pause"].mechanisms
    assert "SIGSTOP to the process and its descendants" in pause
    assert ("cgroup v1 freezer" if v1_freezer_mounted() else "cgroup v2 freezer") in pause
    runtimes = {r.runtime: r for r in info.runtimes}
    assert set(runtimes) == {"containerd", "docker", "cri-o", "pid"}
    assert runtimes["pid"].reachable
    for name in ("containerd", "docker", "cri-o"):
        assert runtimes[name].reachable == accepts_connections(runtimes[name].endpoint), runtimes[name]
    assert list(info.apply_fields) == ["container_id", "injection", "injection.id", "injection.lease",
                                       "injection.owner", "duration"]


def test_get_info_lists_every_kind_the_plugin_applies_through_a_daemon_with_its_fields(daemon):
    info = get_info(daemon)
    by_kind = {k.kind: k for k in info.kinds}
    through_daemon = {name for name, kind in KINDS.items() if kind.uses_daemon}
    # pod-kill is the plugin's own (the Kubernetes API): no daemon offers it.
    assert "pod-kill" in KINDS and "pod-kill" not in through_daemon
    assert set(by_kind) == through_daemon
    for name in through_daemon:
        kind, offered = KINDS[name], by_kind[name]
        assert offered.field == kind.field
        assert offered.recoverable == kind.recoverable
        message = pb.ApplyRequest.DESCRIPTOR.fields_by_name[offered.field].message_type
        assert list(offered.fields) == field_paths(message)
        assert offered.mechanisms, name
    assert "reorder.gap" in by_kind["network-delay"].fields and "scope.peers" in by_kind["network-delay"].fields


def test_get_info_says_whether_netem_is_used_as_the_kernel_allows(daemon):
    info = get_info(daemon)  # --network-emulation=auto
    works = netem_works()
    assert info.netem == works, info.netem_missing
    mechanisms = next(k for k in info.kinds if k.kind == "network-delay").mechanisms
    assert mechanisms[0].startswith("tc netem" if works else "packet queue"), mechanisms


# --- HelloWorld through Apply --------------------------------------------------------------------


@pytest.mark.parametrize("source", [pb.PROCESS_LIST_SOURCE_PS, pb.PROCESS_LIST_SOURCE_PROC])
def test_helloworld_is_a_one_shot_kind_of_apply(daemon, targets, source):
    pid = targets.process("sleep", "4711")
    request = pb.ApplyRequest(container_id=f"pid://{pid}", injection=pb.Injection(id=f"hello-{source}"),
                              hello_world=pb.HelloWorld(source=source))
    reply = daemon.stub.Apply(request, timeout=60)
    assert reply.status.state == pb.InjectionStatus.ONE_SHOT and reply.status.kind == "helloworld"
    assert reply.status.pid == pid
    assert "sleep 4711" in [p.command for p in reply.processes]
    assert "sleep 4711" in reply.output
    # Journaled as every kind is, and listed as ended.
    ended = daemon.stub.ListInjections(pb.ListInjectionsRequest(include_ended=True), timeout=30).injections
    assert [(s.injection_id, s.kind) for s in ended] == [(f"hello-{source}", "helloworld")]


# --- A real older daemon: the daemon package of a commit before GetInfo ---------------------------


@pytest.fixture
def daemon_before_handshake(start_daemon, tmp_path):
    """pytest-chaos-daemon as of BEFORE_HANDSHAKE, from git, alone on its PYTHONPATH."""
    require(shutil.which("git") is not None, "git")
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{BEFORE_HANDSHAKE}^{{commit}}"],
                           capture_output=True)
    require(known.returncode == 0, f"this repository's history (commit {BEFORE_HANDSHAKE})")
    archive = tmp_path / "old.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), BEFORE_HANDSHAKE,
                    "daemon/pytest_chaos_daemon", "pytest_chaos/api"], check=True)
    old = tmp_path / "old"
    with tarfile.open(archive) as tar:
        tar.extractall(old, filter="tar")  # keeps daemon/pytest_chaos_daemon/api, a link to ../../pytest_chaos/api
    assert (old / "daemon/pytest_chaos_daemon/api/v1/chaos_daemon_pb2.py").is_file()
    # The confine helper is built, not committed; this tree's build serves (GetInfo is refused before any use).
    return start_daemon("--allow-pid-targets", "--confine-helper", confine.helper_path(),
                        wrapper=["env", f"PYTHONPATH={old / 'daemon'}"])


@pytest.mark.git_history
def test_a_real_daemon_from_git_that_predates_the_handshake_is_refused(pytester, daemon_before_handshake):
    old = daemon_before_handshake
    with pytest.raises(grpc.RpcError) as unimplemented:
        get_info(old)
    assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED
    pytester.makepyfile(test_user=f"""
        import pytest

        @pytest.mark.chaos("container-pause", selector={{"pids": [{os.getpid()}]}})
        def test_app():
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "chaos", f"--chaos-daemon={old.address}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*daemon at {old.address} predates the version handshake: it answers UNIMPLEMENTED "
                                 f"for GetInfo, so it is pytest-chaos-daemon older than 0.2.0; this plugin is "
                                 f"pytest-chaos {VERSION}*nothing was applied; upgrade the daemon to "
                                 f"pytest-chaos-daemon {VERSION}*"])
    ended = old.stub.ListInjections(pb.ListInjectionsRequest(include_ended=True), timeout=30).injections
    assert list(ended) == []  # nothing reached Apply
    status = subprocess.run([sys.executable, "-m", "pytest_chaos.cli", "status", "--daemon", old.address],
                            capture_output=True, text=True, timeout=120)
    assert f"{old.address}: pytest-chaos-daemon older than 0.2.0 (no GetInfo; upgrade it to {VERSION})" \
        in status.stdout, status.stdout + status.stderr


# --- A daemon lacking one field: a stand-in server -------------------------------------------------
# It stands in for a release older than this plugin that already answers GetInfo (0.2.0 is the first such):
# the next field the plugin learns makes 0.2.0 such a daemon. It offers every kind this tree's daemon does but
# dns, and network-delay without reorder.gap; it records every call and applies nothing.
STAND_IN_VERSION = "0.1.99"


class StandIn(pb_grpc.ChaosDaemonServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.lock = threading.Lock()

    def record(self, name: str, request: object) -> None:
        with self.lock:
            self.calls.append((name, request))

    def names(self, name: str) -> list[object]:
        return [request for called, request in self.calls if called == name]

    def GetInfo(self, request, context):  # noqa: N802
        self.record("GetInfo", request)
        reply = pb.GetInfoResponse(version=STAND_IN_VERSION, cgroup="cgroup v2", kernel="6.1.0", netem=True,
                                   apply_fields=["container_id", "injection", "injection.id", "injection.lease",
                                                 "injection.owner", "duration"])
        for name, kind in KINDS.items():
            if not kind.uses_daemon or name == "dns":
                continue
            message = pb.ApplyRequest.DESCRIPTOR.fields_by_name[kind.field].message_type
            fields = [f for f in field_paths(message) if not (name == "network-delay" and f == "reorder.gap")]
            reply.kinds.add(kind=name, field=kind.field, fields=fields, mechanisms=["stand-in"],
                            recoverable=kind.recoverable)
        return reply

    def Apply(self, request, context):  # noqa: N802
        self.record("Apply", request)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the stand-in applies nothing")

    def Recover(self, request, context):  # noqa: N802
        self.record("Recover", request)
        return pb.RecoverResponse()

    def Renew(self, request, context):  # noqa: N802
        self.record("Renew", request)
        return pb.RenewResponse()


@pytest.fixture
def stand_in(tmp_path) -> Iterator[tuple[str, StandIn]]:
    servicer = StandIn()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_ChaosDaemonServicer_to_server(servicer, server)
    address = f"unix://{tmp_path}/stand-in.sock"
    server.add_insecure_port(address)
    server.start()
    yield address, servicer
    server.stop(grace=None)


STAND_IN_TESTS = """
import pytest

TARGET = {{"pids": [{pid}]}}

@pytest.mark.chaos("network-delay", selector=TARGET, latency="10ms", reorder={{"reorder": "25", "gap": 5}})
def test_delay_with_a_gap():
    pass

@pytest.mark.chaos("dns", selector=TARGET, action="error", patterns=["example.com"])
def test_dns():
    pass

@pytest.mark.chaos("network-delay", selector=TARGET, latency="10ms")
def test_delay_without_a_gap():
    pass
"""


@pytest.mark.needs_root
def test_a_daemon_lacking_a_field_or_a_kind_is_refused_before_anything_is_applied(pytester, stand_in):
    address, servicer = stand_in
    pytester.makepyfile(test_user=STAND_IN_TESTS.format(pid=os.getpid()))
    result = pytester.runpytest_subprocess("-p", "chaos", f"--chaos-daemon={address}", "-rE")
    result.assert_outcomes(errors=3)
    versions = f"daemon at {address} is pytest-chaos-daemon {STAND_IN_VERSION}; this plugin is pytest-chaos {VERSION}"
    result.stdout.fnmatch_lines([
        f'*test_delay_with_a_gap*{versions}: the daemon does not know field "reorder.gap" of kind "network-delay", '
        f"which this experiment sets (it would drop it unread and apply other chaos than asked); upgrade the daemon "
        f"to pytest-chaos-daemon {VERSION}*",
    ])
    result.stdout.fnmatch_lines([f'*test_dns*{versions}: the daemon does not know kind "dns" (it knows: '
                                 f"container-kill, container-pause, helloworld, http-abort, http-delay, http-patch, "
                                 f"http-replace, network-bandwidth, *); upgrade*"])
    # The one request it understands goes through (and the stand-in refuses it itself).
    result.stdout.fnmatch_lines(["*test_delay_without_a_gap*Apply on pid://* failed with FAILED_PRECONDITION: "
                                 "the stand-in applies nothing*"])
    applied = servicer.names("Apply")
    assert len(applied) == 1 and not applied[0].network_delay.HasField("reorder")
    assert len(servicer.names("GetInfo")) == 1  # once per daemon address in a session


# --- --version on every command line, and status ---------------------------------------------------


def cluster_version() -> str:
    return tomllib.loads((ROOT / "cluster" / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.parametrize(("module", "program"), [
    ("pytest_chaos.cli", "pytest-chaos"),
    ("pytest_chaos_daemon", "pytest-chaos-daemon"),
    ("pytest_chaos_daemon.server.certs", "pytest-chaos-daemon-certs"),
    ("pytest_chaos_cluster", "pytest-chaos-cluster"),
])
def test_version_option_prints_the_version_and_exits_0(module, program):
    require(importlib.util.find_spec(module.split(".")[0]) is not None, f"the {module} package")
    result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    expected = cluster_version() if program == "pytest-chaos-cluster" else VERSION
    assert result.stdout == f"{program} {expected}\n"


def test_status_shows_each_daemons_version(daemon):
    result = subprocess.run([sys.executable, "-m", "pytest_chaos.cli", "status", "--daemon", daemon.address],
                            capture_output=True, text=True, timeout=120)
    info = get_info(daemon)
    assert f"{daemon.address}: pytest-chaos-daemon {VERSION}; {info.cgroup}; " in result.stdout, result.stdout
    assert f"kernel {os.uname().release}" in result.stdout
    assert daemon.address not in result.stderr
