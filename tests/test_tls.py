"""Mutual TLS between client and daemon over real TCP on loopback."""

from __future__ import annotations

import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pytest_chaos.errors import ChaosError
from pytest_chaos.transport import ClientTls, DaemonClient
from pytest_chaos_daemon.certs import generate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_tls(directory) -> ClientTls:
    read = lambda name: (directory / name).read_bytes()  # noqa: E731
    return ClientTls(cert=read("client.crt"), key=read("client.key"), ca=read("ca.crt"))


@pytest.fixture
def tls_daemon(start_daemon, tmp_path):
    certs = tmp_path / "certs"
    generate(str(certs))
    port, health_port = free_port(), free_port()
    daemon = start_daemon(
        "--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key"),
        "--tls-client-ca", str(certs / "ca.crt"), "--health-listen", f"tcp://127.0.0.1:{health_port}",
        listen=f"tcp://127.0.0.1:{port}",
    )
    return daemon, f"127.0.0.1:{port}", f"127.0.0.1:{health_port}", certs


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
    without = pytester.runpytest_subprocess("-p", "chaos", f"--chaos-daemon={address}", "--chaos-timeout=5")
    without.assert_outcomes(errors=1)
