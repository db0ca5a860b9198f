"""``pytest-chaos-daemon-certs``: certificates for mutual TLS between the plugin and daemons.

Writes a private CA, a server certificate for the daemons and a client
certificate for the plugin. In a cluster they live in two Secrets in the
daemon's namespace: ``chaos-daemon-tls`` (mounted by the DaemonSet) and
``chaos-daemon-client-tls`` (read by the plugin with the user's kubeconfig,
so whoever may read that Secret may talk to the daemons).

    pytest-chaos-daemon-certs --out DIR
    kubectl -n chaos-testing create secret generic chaos-daemon-tls \\
        --from-file=ca.crt=DIR/ca.crt --from-file=tls.crt=DIR/server.crt --from-file=tls.key=DIR/server.key
    kubectl -n chaos-testing create secret generic chaos-daemon-client-tls \\
        --from-file=ca.crt=DIR/ca.crt --from-file=tls.crt=DIR/client.crt --from-file=tls.key=DIR/client.key
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .server import TLS_SERVER_NAME as SERVER_NAME

CLIENT_NAME = "pytest-chaos-client"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, key, issuer: str, issuer_key, days: int, ca: bool, usage=None, san=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def generate(out_dir: str, days: int = 365) -> list[str]:
    """Write ca.crt, server.crt/key and client.crt/key into ``out_dir``; return the paths."""
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("pytest-chaos CA", ca_key, "pytest-chaos CA", ca_key, days, ca=True)
    files = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM)}
    for role, subject, usage, san in (
        ("server", SERVER_NAME, ExtendedKeyUsageOID.SERVER_AUTH, SERVER_NAME),
        ("client", CLIENT_NAME, ExtendedKeyUsageOID.CLIENT_AUTH, None),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(subject, key, "pytest-chaos CA", ca_key, days, ca=False, usage=usage, san=san)
        files[f"{role}.crt"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{role}.key"] = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    paths = []
    for name, data in files.items():
        path = os.path.join(out_dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pytest-chaos-daemon-certs",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write the PEM files into (mode 0700)")
    parser.add_argument("--days", type=int, default=365, help="validity in days. Default: %(default)s")
    args = parser.parse_args(argv)
    for path in generate(args.out, args.days):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
