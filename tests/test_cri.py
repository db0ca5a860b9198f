"""``cri-o://`` ids resolve through the CRI, tested against containerd's CRI endpoint.

CRI-O itself is not packaged for Debian 12; containerd's CRI plugin serves the
same RuntimeService protocol the daemon speaks for cri-o:// ids. The test runs
a containerd of its own (own socket, root and state, in a temporary
directory): a kubelet on the system containerd would stop pods it did not
create. Containers are created through the CRI with crictl (built by
scripts/setup.sh from the Go module proxy), in a host-network pod, so no CNI
setup is needed.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time
import uuid

import grpc
import pytest
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb

IMAGE = "localhost/pytest-chaos/busybox:cri"
SANDBOX_IMAGE = "localhost/pytest-chaos/busybox:cri-sandbox"
POD_NAMESPACE = "pytest-chaos-test"
CONTAINERD_CONFIG = """\
version = 2
root = "{root}/root"
state = "{root}/state"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  # Without CAP_SYS_RESOURCE runc cannot lower a sandbox's oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
"""


class Cri:
    """A CRI endpoint and crictl pointed at it."""

    def __init__(self, socket_path: str) -> None:
        self.socket = socket_path

    def crictl(self, *args: str) -> str:
        result = subprocess.run(["crictl", "--runtime-endpoint", f"unix://{self.socket}", *args],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"crictl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def serving(self) -> bool:
        try:
            self.crictl("version")
        except RuntimeError:
            return False
        return True


@pytest.fixture(scope="module")
def cri(module_targets):
    """A containerd of this module's own, serving the CRI."""
    module_targets.require(shutil.which("containerd") is not None, "containerd")
    module_targets.require(shutil.which("crictl") is not None, "crictl (built by scripts/setup.sh)")
    root = tempfile.mkdtemp(prefix="chaos-cri-", dir="/var/tmp")
    socket_path = f"{root}/containerd.sock"
    config = pathlib.Path(root, "config.toml")
    config.write_text(CONTAINERD_CONFIG.format(root=root, socket=socket_path, sandbox=SANDBOX_IMAGE))
    log = open(f"{root}/containerd.log", "wb")
    process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    endpoint = Cri(socket_path)
    try:
        wait_until(lambda: os.path.exists(socket_path) and endpoint.serving(), "the test's containerd to serve")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        subprocess.run(["umount", "-R", "-l", root], capture_output=True)  # leftover shm/rootfs mounts, if any
        shutil.rmtree(root, ignore_errors=True)


def wait_until(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def import_image(targets, socket_path: str, name: str, command: list[str]) -> None:
    """Import the busybox rootfs into the test's containerd as ``name`` (built with Docker, no registry)."""
    tar = subprocess.Popen(["tar", "-C", targets.rootfs, "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["docker", "import", "--change", f"CMD {json.dumps(command)}", "-", name],
                   stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    save = subprocess.Popen(["docker", "save", name], stdout=subprocess.PIPE)
    subprocess.run(["ctr", "--address", socket_path, "-n", "k8s.io", "images", "import", "-"],
                   stdin=save.stdout, check=True, capture_output=True)
    save.wait()


@pytest.fixture(scope="module")
def cri_container(module_targets, cri, tmp_path_factory):
    """A running container created through the CRI; yields its id."""
    module_targets.docker_image()  # requires Docker, used to build the images
    import_image(module_targets, cri.socket, SANDBOX_IMAGE, ["/bin/sleep", "infinity"])
    import_image(module_targets, cri.socket, IMAGE, ["/bin/sleep", "3600"])
    directory = tmp_path_factory.mktemp("cri")
    uid = uuid.uuid4().hex[:8]
    pod = {"metadata": {"name": f"chaos-{uid}", "namespace": POD_NAMESPACE, "uid": uid},
           "log_directory": str(directory), "linux": {"security_context": {"namespace_options": {"network": 2}}}}
    container = {"metadata": {"name": "target"}, "image": {"image": IMAGE},
                 "command": ["/bin/sleep", "3600"], "log_path": "target.log",
                 # pid 1 = CONTAINER: its own pid namespace, as Kubernetes does by default
                 "linux": {"security_context": {"namespace_options": {"pid": 1}}}}
    (directory / "pod.json").write_text(json.dumps(pod))
    (directory / "container.json").write_text(json.dumps(container))
    crictl = cri.crictl
    pod_id = crictl("runp", str(directory / "pod.json")).strip()
    try:
        container_id = crictl("create", pod_id, str(directory / "container.json"), str(directory / "pod.json")).strip()
        crictl("start", container_id)
        yield container_id
    finally:
        crictl("stopp", pod_id)
        crictl("rmp", "-f", pod_id)


@pytest.fixture
def cri_daemon(start_daemon, cri):
    return start_daemon("--crio-socket", cri.socket)


def test_cri_container_resolves_to_the_runtimes_pid(cri, cri_daemon, cri_container):
    reply = cri_daemon.stub.ExecHelloWorldChaos(pb.ExecHelloWorldRequest(container_id=f"cri-o://{cri_container}"), timeout=30)
    runtime_pid = json.loads(cri.crictl("inspect", cri_container))["info"]["pid"]
    assert reply.status.pid == runtime_pid
    assert [(p.pid, p.command) for p in reply.processes] == [(1, "/bin/sleep 3600")]


def test_unknown_cri_container_is_not_found(cri_daemon, cri_container):
    with pytest.raises(grpc.RpcError) as info:
        cri_daemon.stub.ExecHelloWorldChaos(pb.ExecHelloWorldRequest(container_id="cri-o://0123456789abcdef"), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
    assert "cri-o://0123456789abcdef" in info.value.details()


def test_stopped_cri_container_is_a_failed_precondition(cri, cri_daemon, cri_container):
    cri.crictl("stop", cri_container)
    with pytest.raises(grpc.RpcError) as info:
        cri_daemon.stub.ExecHelloWorldChaos(pb.ExecHelloWorldRequest(container_id=f"cri-o://{cri_container}"), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
    assert "exited" in info.value.details()
