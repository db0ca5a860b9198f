"""``cri-o://`` ids resolve through the CRI, tested against containerd's CRI endpoint.

CRI-O itself is not packaged for Debian 12; containerd's CRI plugin serves the
same RuntimeService protocol the daemon speaks for cri-o:// ids. Containers
are created through the CRI with crictl (built by .ci/run from the Go module
proxy), in a host-network pod so no CNI setup is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import grpc
import pytest

from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb

CRI_SOCKET = "/run/containerd/containerd.sock"
IMAGE = "localhost/pytest-chaos/busybox:cri"
POD_NAMESPACE = "pytest-chaos-test"


def crictl(*args: str) -> str:
    result = subprocess.run(["crictl", "--runtime-endpoint", f"unix://{CRI_SOCKET}", *args],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"crictl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def import_into_cri(targets, name: str, command: list[str]) -> None:
    """Import the busybox rootfs into containerd's k8s.io namespace as ``name`` (via Docker)."""
    if subprocess.run(["ctr", "-n", "k8s.io", "images", "inspect", name], capture_output=True).returncode == 0:
        return
    tar = subprocess.Popen(["tar", "-C", targets.rootfs, "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["docker", "import", "--change", f"CMD {json.dumps(command)}", "-", name],
                   stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    save = subprocess.Popen(["docker", "save", name], stdout=subprocess.PIPE)
    subprocess.run(["ctr", "-n", "k8s.io", "images", "import", "-"], stdin=save.stdout, check=True, capture_output=True)
    save.wait()


@pytest.fixture(scope="module")
def cri_container(module_targets, tmp_path_factory):
    """A running container created through the CRI; yields its id."""
    module_targets.require(shutil.which("crictl") is not None, "crictl (built by .ci/run)")
    module_targets.require(os.path.exists(CRI_SOCKET), "containerd")
    module_targets.docker_image()  # requires Docker, used to build the images
    sandbox_image = json.loads(crictl("info"))["config"]["sandboxImage"]
    import_into_cri(module_targets, sandbox_image, ["/bin/sleep", "infinity"])
    import_into_cri(module_targets, IMAGE, ["/bin/sleep", "3600"])
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
    pod_id = crictl("runp", str(directory / "pod.json")).strip()
    try:
        container_id = crictl("create", pod_id, str(directory / "container.json"), str(directory / "pod.json")).strip()
        crictl("start", container_id)
        yield container_id
    finally:
        crictl("stopp", pod_id)
        crictl("rmp", "-f", pod_id)


@pytest.fixture
def cri_daemon(start_daemon):
    return start_daemon("--crio-socket", CRI_SOCKET)


def test_cri_container_resolves_to_the_runtimes_pid(cri_daemon, cri_container):
    reply = cri_daemon.stub.ExecHelloWorldChaos(pb.ExecHelloWorldRequest(container_id=f"cri-o://{cri_container}"), timeout=30)
    runtime_pid = json.loads(crictl("inspect", cri_container))["info"]["pid"]
    assert reply.status.pid == runtime_pid
    assert [(p.pid, p.command) for p in reply.processes] == [(1, "/bin/sleep 3600")]


def test_unknown_cri_container_is_not_found(cri_daemon, cri_container):
    with pytest.raises(grpc.RpcError) as info:
        cri_daemon.stub.ExecHelloWorldChaos(pb.ExecHelloWorldRequest(container_id="cri-o://0123456789abcdef"), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
    assert "cri-o://0123456789abcdef" in info.value.details()


def test_stopped_cri_container_is_a_failed_precondition(cri_daemon, cri_container):
    crictl("stop", cri_container)
    with pytest.raises(grpc.RpcError) as info:
        cri_daemon.stub.ExecHelloWorldChaos(pb.ExecHelloWorldRequest(container_id=f"cri-o://{cri_container}"), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
    assert "exited" in info.value.details()
