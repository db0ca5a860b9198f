"""``pytest-chaos-daemon-certs``: what it writes, how it writes it, and whether strict verifiers accept it."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading

import pytest
from cryptography import x509
from pytest_chaos_daemon.api.contract import TLS_SERVER_NAME
from pytest_chaos_daemon.server.certs import main

from tests.support.targets import require

FILES = ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")


def write_certs(directory) -> None:
    assert main(["--out", str(directory)]) == 0


def mode_of(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def openssl(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    require(shutil.which("openssl") is not None, "openssl")
    return subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)


def test_days_below_one_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "certs"), "--days", "0"])
    assert exit_info.value.code == 2
    assert "--days must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "certs").exists()


def test_every_file_is_created_readable_by_its_owner_only(tmp_path):
    write_certs(tmp_path / "certs")
    assert {name: mode_of(tmp_path / "certs" / name) for name in FILES} == {name: 0o600 for name in FILES}


def test_a_world_readable_key_left_from_before_is_replaced_by_a_private_one(tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    old = certs / "client.key"
    old.write_text("old key\n")
    old.chmod(0o644)
    write_certs(certs)
    assert mode_of(old) == 0o600
    assert old.read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_a_symlink_planted_at_client_key_is_refused_and_its_target_untouched(tmp_path, capsys):
    certs = tmp_path / "certs"
    certs.mkdir()
    target = tmp_path / "victim"
    target.write_text("precious\n")
    target.chmod(0o644)
    (certs / "client.key").symlink_to(target)
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(certs)])
    assert exit_info.value.code == 1
    assert "client.key is a symbolic link; refusing to write through it" in capsys.readouterr().err
    assert target.read_text() == "precious\n" and mode_of(target) == 0o644
    # Checked before writing anything: no half-new set of files.
    assert sorted(os.listdir(certs)) == ["client.key"]


def test_an_output_directory_that_is_a_symlink_is_refused(tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", f"{tmp_path}/link/"])
    assert exit_info.value.code == 1
    assert "is a symbolic link" in capsys.readouterr().err
    assert os.listdir(real) == []


def test_the_ca_may_sign_certificates_and_crls_and_says_so_critically(tmp_path):
    write_certs(tmp_path)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert (usage.value.key_cert_sign, usage.value.crl_sign, usage.value.digital_signature) == (True, True, True)


def test_each_leaf_names_the_ca_key_that_signed_it(tmp_path):
    write_certs(tmp_path)
    load = lambda name: x509.load_pem_x509_certificate((tmp_path / name).read_bytes())  # noqa: E731
    ca_key_id = load("ca.crt").extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    for leaf in ("server.crt", "client.crt"):
        authority = load(leaf).extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert authority.key_identifier == ca_key_id, leaf


def test_openssl_strict_verification_accepts_both_certificates(tmp_path):
    write_certs(tmp_path)
    result = openssl("verify", "-x509_strict", "-CAfile", "ca.crt", "server.crt", "client.crt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["server.crt: OK", "client.crt: OK"]


def test_the_server_certificate_verifies_as_a_tls_server_for_the_daemon_name(tmp_path):
    write_certs(tmp_path)
    result = openssl("verify", "-x509_strict", "-purpose", "sslserver", "-verify_hostname", TLS_SERVER_NAME,
                     "-CAfile", "ca.crt", "server.crt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_the_client_certificate_verifies_as_a_tls_client(tmp_path):
    write_certs(tmp_path)
    result = openssl("verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", "ca.crt", "client.crt",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def strict_context(purpose: ssl.Purpose, ca: str) -> ssl.SSLContext:
    """Python 3.13's default context, on older Pythons: strict X.509 checks, partial chains allowed."""
    context = ssl.create_default_context(purpose, cafile=ca)
    context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def test_strict_default_contexts_complete_a_mutual_handshake_for_the_daemon_name(tmp_path):
    write_certs(tmp_path)
    ca = str(tmp_path / "ca.crt")
    server_context = strict_context(ssl.Purpose.CLIENT_AUTH, ca)
    server_context.verify_mode = ssl.CERT_REQUIRED
    server_context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    client_context = strict_context(ssl.Purpose.SERVER_AUTH, ca)
    client_context.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")

    seen: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            try:
                connection, _ = listener.accept()
                connection.settimeout(10)
                with server_context.wrap_socket(connection, server_side=True) as tls:
                    seen["client"] = tls.getpeercert()
                    tls.sendall(b"ok")
            except Exception as err:  # reported by the assertion below
                seen["server error"] = err

        thread = threading.Thread(target=serve)
        thread.start()
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with client_context.wrap_socket(raw, server_hostname=TLS_SERVER_NAME) as tls:
                server_cert = tls.getpeercert()
                reply = tls.recv(2)
        thread.join(10)

    assert "server error" not in seen, seen.get("server error")
    assert reply == b"ok"
    assert ("DNS", TLS_SERVER_NAME) in server_cert["subjectAltName"]
    assert dict(pair for rdn in seen["client"]["subject"] for pair in rdn)["commonName"] == "pytest-chaos-client"
