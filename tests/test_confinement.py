"""A fault command runs inside its target as the target would: never with more privilege.

Each test checks from outside the daemon: files an attacker's program tried
to write, credentials and cgroups it recorded, what the kernel says of it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid

import grpc
import pytest
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos_daemon.confinement import procfs
from pytest_chaos_daemon.confinement.tracking import HIERARCHY

from tests.support.cgroups import tracking_modes
from tests.support.targets import require, wait_for

pytestmark = pytest.mark.needs_root

NOBODY = 65534


def hello(daemon, container_id: str, source: int = pb.PROCESS_LIST_SOURCE_PS) -> pb.ExecHelloWorldResponse:
    request = pb.ExecHelloWorldRequest(container_id=container_id, source=source)
    return daemon.stub.ExecHelloWorldChaos(request, timeout=30)


def status_code(daemon, container_id: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        hello(daemon, container_id)
    return info.value.code(), info.value.details()


@pytest.fixture
def attack_dir():
    """A directory the unprivileged attacker can read and write, removed after the test."""
    path = f"/tmp/chaos-attack-{uuid.uuid4().hex[:8]}"
    os.mkdir(path)
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class UserNamespaceAttacker:
    """As ``nobody``: a user, mount and pid namespace whose ``sh`` is the attacker's script."""

    def __init__(self, attack_dir: str) -> None:
        require(shutil.which("setpriv") is not None and shutil.which("unshare") is not None, "setpriv and unshare")
        self.proof = os.path.join(attack_dir, "root-only", "written-as-root")
        os.mkdir(os.path.dirname(self.proof), 0o755)  # root's; nobody cannot create files in it
        self.leak = os.path.join(attack_dir, "leaked-shadow")
        self.evil = os.path.join(attack_dir, "evil-sh")
        with open(self.evil, "w") as f:
            f.write(f"#!/bin/bash\ntouch {self.proof}\ncat /etc/shadow > {self.leak}\n"
                    "echo 'PID USER TIME COMMAND'\n")
        os.chmod(self.evil, 0o755)
        shell = os.path.realpath(shutil.which("sh") or "/bin/sh")
        self.outer = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
             "unshare", "-Urm", "--pid", "--fork", "--mount-proc",
             "sh", "-c", f"mount --bind {self.evil} {shell} && exec sleep 3600"],
        )

        def inner() -> int | None:
            try:
                pid = int(open(f"/proc/{self.outer.pid}/task/{self.outer.pid}/children").read().split()[0])
                return pid if open(f"/proc/{pid}/cmdline").read().startswith("sleep") else None
            except (OSError, IndexError, ValueError):
                return None

        self.pid = int(wait_for(inner, "the attacker's namespace to start"))

    def close(self) -> None:
        for pid in (self.outer.pid, self.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.outer.wait()


@pytest.fixture
def attacker(attack_dir):
    attacker = UserNamespaceAttacker(attack_dir)
    yield attacker
    attacker.close()


def test_control_the_attack_escalates_under_a_plain_nsenter(attacker):
    # What the daemon used to run: proves the setup below really attacks.
    subprocess.run(["nsenter", "-t", str(attacker.pid), "-m", "-p", "--", "sh", "-c", "ps aux"],
                   capture_output=True, timeout=30)
    assert os.path.exists(attacker.proof)
    assert os.path.getsize(attacker.leak) > 0


def test_user_namespace_attacker_gets_no_root_through_the_daemon(daemon, attacker):
    try:
        hello(daemon, f"pid://{attacker.pid}")
    except grpc.RpcError:
        pass  # failing is fine; escalating is not
    assert not os.path.exists(attacker.proof)
    assert not os.path.exists(attacker.leak) or os.path.getsize(attacker.leak) == 0


def test_user_namespace_target_is_listed_as_its_own_root(daemon, attack_dir, targets):
    # A plain user-namespaced process (no bind mount): the probe runs as its root, i.e. nobody outside.
    outer = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                              "unshare", "-Ur", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc",
                              "sleep", "7321"])
    try:
        pid = int(wait_for(lambda: _child_running(outer.pid, "sleep"), "the namespace to start"))
        reply = hello(daemon, f"pid://{pid}")
        assert [(p.pid, p.user, p.command) for p in reply.processes] == [(1, "root", "sleep 7321")]
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(outer.pid)], check=False)  # the namespace's init
        outer.kill()
        outer.wait()


def _child_running(parent: int, program: str) -> int | None:
    try:
        pid = int(open(f"/proc/{parent}/task/{parent}/children").read().split()[0])
        return pid if open(f"/proc/{pid}/cmdline").read().startswith(program) else None
    except (OSError, IndexError, ValueError):
        return None


def recording_rootfs(busybox_rootfs: str, directory) -> str:
    """A busybox rootfs whose ``sh`` first records its own credentials and cgroups in /record."""
    root = os.path.join(directory, "rootfs")
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    os.unlink(os.path.join(root, "bin", "sh"))
    with open(os.path.join(root, "bin", "sh"), "w") as f:
        f.write("#!/bin/busybox sh\ncat /proc/self/status > /record.status\ncat /proc/self/cgroup > /record.cgroup\n"
                'cat /proc/1/cgroup > /record.init-cgroup\nexec /bin/busybox sh "$@"\n')
    os.chmod(os.path.join(root, "bin", "sh"), 0o755)
    return root


def fields(status_text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in status_text.splitlines() if ":\t" in line)


@pytest.mark.parametrize("tracking", tracking_modes())
def test_probe_in_a_container_has_the_containers_credentials_cgroups_and_no_new_privs(start_daemon, targets, tmp_path,
                                                                                     tracking):
    daemon = start_daemon("--containerd-namespace", "*", "--probe-tracking", tracking)
    rootfs = recording_rootfs(targets.rootfs, tmp_path)
    container_id = targets.containerd("sleep", "3600", rootfs=rootfs)
    reply = hello(daemon, f"containerd://{container_id}")
    assert "sleep 3600" in [p.command for p in reply.processes]
    probe = fields(open(os.path.join(rootfs, "record.status")).read())
    init = fields(open(f"/proc/{reply.status.pid}/status").read())
    assert probe["Uid"].split()[1] == init["Uid"].split()[1] == "0"
    assert int(probe["CapEff"], 16) == int(init["CapEff"], 16) != int(fields(open("/proc/self/status").read())["CapEff"], 16)
    assert int(probe["CapBnd"], 16) == int(init["CapBnd"], 16)
    assert probe["NoNewPrivs"].strip() == "1"
    # Both as seen from inside the container (its cgroup namespace), the daemon's tracking hierarchy left out;
    # a cgroup v2 probe is a child of the container's cgroup.
    probe_cgroups, init_cgroups = (own_cgroups(open(os.path.join(rootfs, name)).read())
                                   for name in ("record.cgroup", "record.init-cgroup"))
    assert probe_cgroups.keys() == init_cgroups.keys()
    for hierarchy, path in init_cgroups.items():
        tracked_below = hierarchy == "" and probe_cgroups[hierarchy].startswith(f"{path.rstrip('/')}/pytest-chaos-probe.")
        assert probe_cgroups[hierarchy] == path or tracked_below, (hierarchy, probe_cgroups[hierarchy], path)


def own_cgroups(text: str) -> dict[str, str]:
    """``/proc/PID/cgroup`` as {controllers: path}, the daemon's tracking hierarchy left out."""
    return {line.split(":")[1]: line.split(":", 2)[2] for line in text.splitlines() if HIERARCHY not in line}


def test_probe_of_a_non_root_process_runs_as_that_user(daemon):
    # A process of nobody's in the host's namespaces: the probe's own ps is listed, as nobody.
    sleeper = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                                "sleep", "7322"])
    try:
        wait_for(lambda: open(f"/proc/{sleeper.pid}/cmdline").read().startswith("sleep"), "sleep to start")
        reply = hello(daemon, f"pid://{sleeper.pid}")
        probe_rows = [line for line in reply.output.splitlines()
                      if line.split(None, 10)[-1] in ("sh -c ps aux", "ps aux")]
        assert probe_rows and all(line.split()[0] == "nobody" for line in probe_rows), probe_rows
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("which", ["init", "daemon", "daemon's parent"])
def test_the_node_and_the_daemon_are_never_targets(daemon, which):
    pid = {"init": 1, "daemon": daemon.process.pid, "daemon's parent": os.getpid()}[which]
    code, details = status_code(daemon, f"pid://{pid}")
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert "refused" in details


def test_a_kernel_thread_is_not_a_target(daemon):
    kernel_thread = next(int(pid) for pid in sorted(os.listdir("/proc"), key=lambda p: (len(p), p))
                         if pid.isdigit() and procfs.read_stat(pid).kernel_thread)
    code, details = status_code(daemon, f"pid://{kernel_thread}")
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    assert "kernel thread" in details


def test_pid_targets_need_the_flag(start_daemon, targets):
    daemon = start_daemon()
    code, details = status_code(daemon, f"pid://{targets.process('sleep', '7323')}")
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "--allow-pid-targets" in details


def test_a_process_the_daemon_may_not_inspect_is_permission_denied(start_daemon):
    # A root daemon without CAP_SYS_PTRACE may not open another user's namespaces.
    daemon = start_daemon("--allow-pid-targets", wrapper=["setpriv", "--bounding-set=-sys_ptrace", "--"])
    sleeper = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                                "sleep", "7324"])
    try:
        wait_for(lambda: open(f"/proc/{sleeper.pid}/cmdline").read().startswith("sleep"), "sleep to start")
        code, details = status_code(daemon, f"pid://{sleeper.pid}")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert f"/proc/{sleeper.pid}/ns/" in details


def test_native_listing_executes_nothing_in_the_target(daemon, targets, tmp_path):
    rootfs = recording_rootfs(targets.rootfs, tmp_path)
    container_id = targets.containerd("sleep", "3601", rootfs=rootfs)
    record = os.path.join(rootfs, "record.status")
    native = hello(daemon, f"containerd://{container_id}", pb.PROCESS_LIST_SOURCE_PROC)
    assert not os.path.exists(record)  # no sh ran
    hello(daemon, f"containerd://{container_id}", pb.PROCESS_LIST_SOURCE_PS)
    assert os.path.exists(record)  # the probe's sh did
    assert [(p.pid, p.user, p.command) for p in native.processes] == [(1, "root", "sleep 3601")]
    header = native.output.splitlines()[0].split()
    assert header[:2] == ["USER", "PID"] and header[-1] == "COMMAND"


@pytest.mark.parametrize("runtime", ["containerd", "docker", "pid"])
def test_native_listing_matches_ps_on_each_target_type(daemon, targets, runtime):
    command = ("sh", "-c", "sleep 7326 & sleep 7325; wait")
    container_id = {
        "containerd": lambda: f"containerd://{targets.containerd(*command)}",
        "docker": lambda: f"docker://{targets.docker(*command)}",
        "pid": lambda: f"pid://{targets.process(*command)}",
    }[runtime]()
    listed = lambda reply: [(p.pid, p.user, p.command) for p in reply.processes]  # noqa: E731
    native = listed(hello(daemon, container_id, pb.PROCESS_LIST_SOURCE_PROC))
    assert native == listed(hello(daemon, container_id, pb.PROCESS_LIST_SOURCE_PS))
    assert native[0] == (1, "root", "sh -c sleep 7326 & sleep 7325; wait")
    assert sorted(command for _, _, command in native[1:]) == ["sleep 7325", "sleep 7326"]


def test_native_listing_works_on_a_distroless_container(daemon, targets, tmp_path):
    rootfs = targets.distroless_rootfs(tmp_path)
    container_id = targets.containerd("/bin/busybox", "sleep", "3600", rootfs=rootfs)
    code, details = status_code(daemon, f"containerd://{container_id}")
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "source='proc'" in details
    reply = hello(daemon, f"containerd://{container_id}", pb.PROCESS_LIST_SOURCE_PROC)
    assert [(p.pid, p.command) for p in reply.processes] == [(1, "/bin/busybox sleep 3600")]


def test_native_listing_does_not_follow_a_targets_symlinks_out_of_it(daemon, targets, tmp_path):
    secret = f"/tmp/chaos-secret-passwd-{uuid.uuid4().hex[:8]}"
    with open(secret, "w") as f:
        f.write("sekrit:x:0:0::/:/bin/sh\n")
    try:
        rootfs = os.path.join(tmp_path, "rootfs")
        shutil.copytree(targets.rootfs, rootfs, symlinks=True)
        os.unlink(os.path.join(rootfs, "etc", "passwd"))
        os.symlink(secret, os.path.join(rootfs, "etc", "passwd"))  # absolute: the node's file, if followed
        container_id = targets.containerd("sleep", "3600", rootfs=rootfs)
        reply = hello(daemon, f"containerd://{container_id}", pb.PROCESS_LIST_SOURCE_PROC)
    finally:
        os.unlink(secret)
    assert "sekrit" not in reply.output
    assert [(p.user, p.command) for p in reply.processes] == [("0", "sleep 3600")]
