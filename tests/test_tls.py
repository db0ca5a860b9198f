"""TCP means mutual TLS: client and daemon over real TCP on loopback, plaintext only when asked for."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pytest_chaos_daemon.api.contract import TLS_SERVER_NAME
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2_grpc as pb_grpc
from pytest_chaos_daemon.server.certs import generate
from pytest_chaos_daemon.server.probes import MAX_WATCHES
from pytest_chaos_daemon.server.tls import client_certificate_verdict

from pytest_chaos.errors import ChaosError
from pytest_chaos.transport import ClientTls, DaemonClient
from tests.support.targets import require

# The page of the docs that shows how to talk to a daemon by hand (it was the README's section).
README = pathlib.Path(__file__).resolve().parents[1] / "docs" / "deploying.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_tls(directory) -> ClientTls:
    read = lambda name: (directory / name).read_bytes()  # noqa: E731
    return ClientTls(cert=read("client.crt"), key=read("client.key"), ca=read("ca.crt"))


def log_entries(daemon) -> list[dict]:
    return [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]


@pytest.fixture
def tls_daemon(start_daemon, tmp_path):
    certs = tmp_path / "certs"
    generate(str(certs))
    port, health_port = free_port(), free_port()
    daemon = start_daemon(
        "--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key"),
        "--tls-client-ca", str(certs / "ca.crt"), "--health-listen", f"tcp://127.0.0.1:{health_port}",
        "--containerd-namespace", "*", "--allow-pid-targets",
        listen=f"tcp://127.0.0.1:{port}",
    )
    return daemon, f"127.0.0.1:{port}", f"127.0.0.1:{health_port}", certs


@pytest.fixture
def insecure_daemon(start_daemon):
    port = free_port()
    return start_daemon("--insecure", "--allow-pid-targets", listen=f"tcp://127.0.0.1:{port}"), f"127.0.0.1:{port}"


# --- mutual TLS -------------------------------------------------------------------------------

def test_client_with_a_certificate_gets_through(tls_daemon, targets):
    _, address, _, certs = tls_daemon
    pid = targets.process("sleep", "4321")
    client = DaemonClient(address, tls=client_tls(certs))
    try:
        reply = client.exec_hello_world(f"pid://{pid}")
    finally:
        client.close()
    assert [p.command for p in reply.processes] == ["sleep 4321"]


def test_client_without_a_certificate_is_refused(tls_daemon):
    _, address, _, _ = tls_daemon
    client = DaemonClient(address, timeout_s=5)
    try:
        with pytest.raises(ChaosError):
            client.exec_hello_world("pid://1")
    finally:
        client.close()


def test_client_certificate_from_another_ca_is_refused(tls_daemon, tmp_path):
    _, address, _, certs = tls_daemon
    other = tmp_path / "other"
    generate(str(other))
    stranger = ClientTls(cert=(other / "client.crt").read_bytes(), key=(other / "client.key").read_bytes(),
                         ca=(certs / "ca.crt").read_bytes())
    client = DaemonClient(address, timeout_s=5, tls=stranger)
    try:
        with pytest.raises(ChaosError):
            client.exec_hello_world("pid://1")
    finally:
        client.close()


def test_health_is_served_in_plaintext_for_kubelet_probes(tls_daemon):
    _, _, health_address, _ = tls_daemon
    with grpc.insecure_channel(health_address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_plaintext_health_listener_serves_nothing_but_health(tls_daemon):
    _, _, health_address, _ = tls_daemon
    with grpc.insecure_channel(health_address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.ChaosDaemonStub(channel).ExecHelloWorldChaos(pb.ExecHelloWorldRequest(container_id="pid://1"),
                                                                 timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_open_watch_streams_never_starve_the_probes_check(tls_daemon):
    """Any pod may reach the plaintext health port. Watch streams held open by it once filled the port's one
    concurrency bound, and every kubelet probe failed: Check now always answers, and Watch has a bound of its
    own."""
    _, _, health_address, _ = tls_daemon
    with grpc.insecure_channel(health_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = [stub.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(MAX_WATCHES)]
        try:
            for watch in watches:  # each stream is open on the server once its first answer arrives
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as info:
                next(stub.Watch(health_pb2.HealthCheckRequest(), timeout=5))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for _ in range(20):  # as a kubelet's liveness and readiness probes would, meanwhile
                assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                    health_pb2.HealthCheckResponse.SERVING
        finally:
            for watch in watches:
                watch.cancel()


def test_plaintext_health_listener_on_a_unix_socket_is_private(start_daemon, tmp_path):
    generate(str(tmp_path / "certs"))
    certs = tmp_path / "certs"
    health_socket = tmp_path / "health.sock"
    start_daemon(
        "--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key"),
        "--tls-client-ca", str(certs / "ca.crt"), "--health-listen", f"unix://{health_socket}",
        listen=f"tcp://127.0.0.1:{free_port()}",
    )
    mode = os.stat(health_socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    with grpc.insecure_channel(f"unix://{health_socket}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_plugin_talks_mutual_tls_to_a_daemon_given_its_certificates(tls_daemon, targets, pytester):
    _, address, _, certs = tls_daemon
    pid = targets.process("sleep", "4322")
    pytester.makepyfile(test_user=f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": [{pid}]}})
        def test_app(chaos):
            assert [p.command for p in chaos.experiments[0].targets[0].processes] == ["sleep 4322"]
    """)
    with_certs = pytester.runpytest_subprocess("-p", "chaos", f"--chaos-daemon={address}", f"--chaos-daemon-certs={certs}")
    with_certs.assert_outcomes(passed=1)
    plaintext = pytester.runpytest_subprocess(
        "-p", "chaos", f"--chaos-daemon={address}", "--chaos-daemon-insecure", "--chaos-timeout=5"
    )
    plaintext.assert_outcomes(errors=1)


# --- client certificate checks ----------------------------------------------------------------

class OwnCa:
    """A CA made here, whose key the test keeps, to issue client certificates with chosen properties."""

    def __init__(self, directory: pathlib.Path) -> None:
        directory.mkdir()
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test client CA")])
        self.cert = self._build(self.name, self.key, ca=True, usages=None)
        self.path = directory / "ca.crt"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, ca: bool = False,
              usages: list[x509.ObjectIdentifier] | None = None) -> tuple[bytes, bytes]:
        """A certificate (PEM) and its key (PEM), signed by this CA; ``usages=None``: no extended key usage."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), key, ca=ca, usages=usages)
        return (cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))

    def _build(self, subject: x509.Name, key, *, ca: bool, usages) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if usages is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        return builder.sign(self.key, hashes.SHA256())


@pytest.fixture
def own_ca_daemon(start_daemon, tmp_path):
    """A TLS daemon whose client CA is an ``OwnCa``; its server certificate comes from pytest-chaos-daemon-certs."""
    certs = tmp_path / "certs"
    generate(str(certs))
    own = OwnCa(tmp_path / "own")
    port = free_port()
    daemon = start_daemon(
        "--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key"),
        "--tls-client-ca", str(own.path), listen=f"tcp://127.0.0.1:{port}",
    )
    return daemon, f"127.0.0.1:{port}", (certs / "ca.crt").read_bytes(), own


def secure_channel(address: str, server_ca: bytes, cert: bytes, key: bytes) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(server_ca, key, cert)
    return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", TLS_SERVER_NAME)])


def health_check_error(address: str, server_ca: bytes, cert: bytes, key: bytes) -> grpc.RpcError | None:
    with secure_channel(address, server_ca, cert, key) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as err:
            return err
    return None


def test_client_certificate_with_client_auth_from_the_client_ca_gets_through(own_ca_daemon):
    _, address, server_ca, own = own_ca_daemon
    assert health_check_error(address, server_ca, *own.issue("client", usages=[ExtendedKeyUsageOID.CLIENT_AUTH])) is None


def test_client_certificate_without_client_auth_usage_is_unauthenticated(own_ca_daemon):
    _, address, server_ca, own = own_ca_daemon
    err = health_check_error(address, server_ca, *own.issue("no usage"))
    assert err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "CN=no usage refused: its extended key usage lacks clientAuth" in err.details()


def test_client_certificate_for_servers_only_is_refused_at_the_handshake(own_ca_daemon):
    _, address, server_ca, own = own_ca_daemon
    err = health_check_error(address, server_ca, *own.issue("server only", usages=[ExtendedKeyUsageOID.SERVER_AUTH]))
    assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE


def test_ca_certificate_used_as_a_client_certificate_is_unauthenticated(own_ca_daemon):
    _, address, server_ca, own = own_ca_daemon
    err = health_check_error(address, server_ca, *own.issue("sub CA", ca=True, usages=[ExtendedKeyUsageOID.CLIENT_AUTH]))
    assert err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "it is a CA certificate (BasicConstraints ca=True)" in err.details()


def test_streaming_calls_check_the_client_certificate_too(own_ca_daemon):
    _, address, server_ca, own = own_ca_daemon
    with secure_channel(address, server_ca, *own.issue("no usage")) as channel:
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        with pytest.raises(grpc.RpcError) as info:
            list(replies)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_refused_client_certificate_is_logged_with_its_reasons(own_ca_daemon):
    daemon, address, server_ca, own = own_ca_daemon
    health_check_error(address, server_ca, *own.issue("no usage"))
    refusals = [e for e in log_entries(daemon) if e["msg"] == "client certificate refused"]
    assert [(e["level"], e["subject"], e["reasons"], e["method"]) for e in refusals] == [
        ("warning", "CN=no usage", ["its extended key usage lacks clientAuth"], "/grpc.health.v1.Health/Check")
    ]


def test_client_certificate_verdict_is_computed_once_per_certificate(tmp_path):
    cert, _ = OwnCa(tmp_path / "own").issue("client", usages=[ExtendedKeyUsageOID.CLIENT_AUTH])
    first = client_certificate_verdict(cert)
    assert first.allowed
    assert client_certificate_verdict(cert) is first


# --- plaintext TCP, only on request ---------------------------------------------------------

def test_daemon_refuses_plaintext_tcp_without_insecure():
    result = subprocess.run(
        [sys.executable, "-m", "pytest_chaos_daemon", "--listen", f"tcp://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "TCP means mutual TLS: pass --tls-cert, --tls-key and --tls-client-ca" in result.stderr
    assert "or --insecure" in result.stderr


def test_daemon_refuses_insecure_together_with_tls_flags(tmp_path):
    generate(str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "pytest_chaos_daemon", "--listen", f"tcp://127.0.0.1:{free_port()}", "--insecure",
         "--tls-cert", str(tmp_path / "server.crt"), "--tls-key", str(tmp_path / "server.key"),
         "--tls-client-ca", str(tmp_path / "ca.crt")],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "--insecure contradicts --tls-cert/--tls-key/--tls-client-ca" in result.stderr


def test_daemon_started_with_insecure_serves_plaintext_tcp(insecure_daemon):
    daemon, _ = insecure_daemon
    reply = health_pb2_grpc.HealthStub(daemon.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_insecure_daemon_warns_at_start_even_on_loopback(insecure_daemon):
    daemon, address = insecure_daemon
    warnings = [e for e in log_entries(daemon) if e["level"] == "warning"]
    assert [e["listen"] for e in warnings if "plaintext TCP" in e["msg"]] == [f"tcp://{address}"]


def test_plugin_refuses_plaintext_tcp_without_chaos_daemon_insecure(pytester):
    pytester.makepyfile(test_user="def test_app():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "chaos", f"--chaos-daemon=127.0.0.1:{free_port()}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*is TCP, and TCP means mutual TLS: pass --chaos-daemon-certs=DIR*"
                                 "or --chaos-daemon-insecure*"])


def test_plugin_talks_plaintext_tcp_given_chaos_daemon_insecure(insecure_daemon, targets, pytester):
    _, address = insecure_daemon
    pid = targets.process("sleep", "4324")
    pytester.makepyfile(test_user=f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": [{pid}]}})
        def test_app(chaos):
            assert [p.command for p in chaos.experiments[0].targets[0].processes] == ["sleep 4324"]
    """)
    result = pytester.runpytest_subprocess("-p", "chaos", f"--chaos-daemon={address}", "--chaos-daemon-insecure")
    result.assert_outcomes(passed=1)


def test_chaos_daemon_insecure_ini_value_yes_allows_plaintext_tcp(insecure_daemon, pytester):
    _, address = insecure_daemon
    pytester.makeini("[pytest]\nchaos_daemon_insecure = yes\n")
    pytester.makepyfile(test_user="def test_app():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "chaos", f"--chaos-daemon={address}")
    result.assert_outcomes(passed=1)


# --- the docs' grpcurl and grpc-health-probe commands (docs/deploying.md), run as written ------------------------

def readme_command(tool: str, wanted: str) -> str:
    """The one command of the README's ``sh`` blocks that runs ``tool`` and contains ``wanted``."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    found = [line for line in lines if line.split(" ", 1)[0] == tool and wanted in line]
    assert len(found) == 1, f"{README.name}: {len(found)} {tool} commands with {wanted!r}"
    return found[0]


def run_readme_command(tool: str, wanted: str, tls_daemon, **substitutions: str) -> subprocess.CompletedProcess[str]:
    """Run the README's command in the test's certificate directory, against the test's daemon."""
    require(shutil.which(tool) is not None, f"{tool} (scripts/setup.sh installs it)")
    _, address, health_address, certs = tls_daemon
    command = readme_command(tool, wanted)
    for old, new in {"$daemon:31767": address, "$daemon:31766": health_address, **substitutions}.items():
        command = command.replace(old, new)
    result = subprocess.run(shlex.split(command, comments=True), cwd=certs, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
    return result


def test_readme_grpcurl_lists_the_daemon_services(tls_daemon):
    services = run_readme_command("grpcurl", " list", tls_daemon).stdout.split()
    assert {"pytest_chaos.daemon.v1.ChaosDaemon", "grpc.health.v1.Health"} <= set(services)


def test_readme_grpcurl_health_check_says_serving(tls_daemon):
    assert json.loads(run_readme_command("grpcurl", "Health/Check", tls_daemon).stdout) == {"status": "SERVING"}


def test_readme_grpcurl_exec_hello_world_lists_the_container_processes(tls_daemon, targets):
    container = targets.containerd("sleep", "4325")
    reply = json.loads(run_readme_command("grpcurl", "ExecHelloWorldChaos", tls_daemon,
                                          **{"containerd://ID": f"containerd://{container}"}).stdout)
    assert [p["command"] for p in reply["processes"]] == ["sleep 4325"]


def test_readme_health_probe_over_mutual_tls_says_serving(tls_daemon):
    # grpc-health-probe reports on stderr
    assert run_readme_command("grpc-health-probe", "-tls ", tls_daemon).stderr.strip() == "status: SERVING"


def test_readme_health_probe_on_the_plaintext_port_says_serving(tls_daemon):
    assert run_readme_command("grpc-health-probe", "31766", tls_daemon).stderr.strip() == "status: SERVING"
