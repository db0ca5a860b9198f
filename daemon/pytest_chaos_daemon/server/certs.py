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
import contextlib
import datetime
import errno
import os
import stat
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..api.contract import TLS_SERVER_NAME as SERVER_NAME
from ..api.version import VERSION

CLIENT_NAME = "pytest-chaos-client"
CA_NAME = "pytest-chaos CA"


class CertsError(Exception):
    """The output directory or one of its files cannot be written safely."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign, crl_sign=crl_sign,
        encipher_only=False, decipher_only=False,
    )


def _builder(subject: str, key: ec.EllipticCurvePrivateKey, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _issue_ca(key: ec.EllipticCurvePrivateKey, days: int) -> x509.Certificate:
    # What strict verifiers (openssl -x509_strict, Python 3.13's default
    # context) demand of a CA: critical BasicConstraints and KeyUsage with
    # keyCertSign, and a SubjectKeyIdentifier.
    return (
        _builder(CA_NAME, key, days)
        .issuer_name(_name(CA_NAME))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )


def _issue_leaf(
    subject: str, key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
    days: int, usage: x509.ObjectIdentifier, san: str | None = None,
) -> x509.Certificate:
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        _builder(subject, key, days)
        .issuer_name(ca.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        # ECDSA signs the handshake: digitalSignature is the usage TLS needs.
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def generate(out_dir: str, days: int = 365) -> list[str]:
    """Write ca.crt, server.crt/key and client.crt/key into ``out_dir``; return the paths.

    Every file is created anew, mode 0600: an existing regular file is replaced,
    a symbolic link (at a file's path or as ``out_dir`` itself) is refused with
    CertsError before anything is written.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue_ca(ca_key, days)
    files = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM)}
    for role, subject, usage, san in (
        ("server", SERVER_NAME, ExtendedKeyUsageOID.SERVER_AUTH, SERVER_NAME),
        ("client", CLIENT_NAME, ExtendedKeyUsageOID.CLIENT_AUTH, None),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{role}.crt"] = _issue_leaf(subject, key, ca, ca_key, days, usage, san).public_bytes(
            serialization.Encoding.PEM
        )
        files[f"{role}.key"] = _pem_key(key)
    directory = _open_directory(out_dir)
    try:
        # Check every path first, so a refusal leaves the old set whole.
        for name in files:
            _check_replaceable(directory, out_dir, name)
        for name, data in files.items():
            _write_private(directory, out_dir, name, data)
    finally:
        os.close(directory)
    return [os.path.join(out_dir, name) for name in files]


def _open_directory(out_dir: str) -> int:
    # A trailing slash would make the kernel follow a symlink despite O_NOFOLLOW.
    path = out_dir.rstrip("/") or "/"
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise CertsError(f"{out_dir} is a symbolic link; refusing to write private keys where it points "
                             "(pass the directory itself)")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        # O_NOFOLLOW closes the race with a symlink planted after the check above.
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise CertsError(f"{out_dir} is a symbolic link; refusing to write private keys where it points") from None
        raise CertsError(f"{out_dir}: {err.strerror}") from None


def _check_replaceable(directory: int, out_dir: str, name: str) -> None:
    try:
        mode = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    path = os.path.join(out_dir, name)
    if stat.S_ISLNK(mode):
        raise CertsError(f"{path} is a symbolic link; refusing to write through it (remove it if it is yours)")
    if not stat.S_ISREG(mode):
        raise CertsError(f"{path} exists and is not a regular file; refusing to replace it")


def _write_private(directory: int, out_dir: str, name: str, data: bytes) -> None:
    path = os.path.join(out_dir, name)
    # Removed and created afresh rather than truncated: an old file keeps its
    # mode (an 0644 key stays readable), a new one gets 0600.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=directory)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=directory)
    except FileExistsError:
        raise CertsError(f"{path} was created by someone else while being written; refusing it") from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)  # whatever the umask
        f.write(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pytest-chaos-daemon-certs",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="directory to write the PEM files into, each mode 0600 (created mode 0700; "
                        "a symbolic link is refused)")
    parser.add_argument("--days", type=int, default=365, help="validity in days, at least 1. Default: %(default)s")
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error(f"--days must be at least 1, not {args.days}")
    try:
        paths = generate(args.out, args.days)
    except CertsError as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
