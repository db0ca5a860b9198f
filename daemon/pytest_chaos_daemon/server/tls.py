"""Mutual TLS on the daemon's TCP listener: the server's files and the checks on client certificates.

grpc's handshake checks that a client certificate chains to ``--tls-client-ca``
and refuses an extended key usage without clientAuth, but it lets through a
certificate with no extended key usage at all, and a CA certificate. The
interceptor here closes both: a client must present a leaf certificate made
for client authentication.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from .interceptors import Context, HandlerWrapping
from .logs import log

# Distinct certificates a daemon sees are few (one per client Secret); the
# bound only keeps a stream of new ones from growing the cache without end.
_VERDICT_CACHE_SIZE = 256


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """Server certificate and key, and the CA that client certificates must chain to."""

    cert: str
    key: str
    client_ca: str

    def credentials(self) -> grpc.ServerCredentials:
        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()

        return grpc.ssl_server_credentials(
            [(read(self.key), read(self.cert))], root_certificates=read(self.client_ca), require_client_auth=True
        )


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether a client certificate may call the daemon; ``problems`` say why not."""

    subject: str
    problems: tuple[str, ...]

    @property
    def allowed(self) -> bool:
        return not self.problems


@functools.lru_cache(maxsize=_VERDICT_CACHE_SIZE)
def client_certificate_verdict(pem: bytes) -> Verdict:
    """Check that ``pem`` is a leaf certificate whose extended key usage includes clientAuth."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as err:
        return Verdict("?", (f"it cannot be parsed ({err})",))
    problems = []
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca:
        problems.append("it is a CA certificate (BasicConstraints ca=True), not a client's")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        problems.append("its extended key usage lacks clientAuth")
    return Verdict(cert.subject.rfc4514_string(), tuple(problems))


def client_certificate_check() -> HandlerWrapping:
    """An interceptor aborting every call whose client certificate is a CA's or lacks the
    clientAuth extended key usage."""
    return HandlerWrapping(check=_check)


async def _check(context: Context, method: str) -> None:
    pem = next(iter(context.auth_context().get("x509_pem_cert") or ()), None)
    verdict = client_certificate_verdict(pem) if pem is not None else Verdict("-", ("no client certificate was presented",))
    if verdict.allowed:
        return
    reasons = "; ".join(verdict.problems)
    log(logging.WARNING, "client certificate refused", subject=verdict.subject, reasons=list(verdict.problems),
        method=method, peer=context.peer())
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        f"client certificate {verdict.subject} refused: {reasons} "
        "(use the client certificate pytest-chaos-daemon-certs writes)",
    )
