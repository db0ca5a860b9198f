"""pytest-chaos: the chaos in force on the daemons you can reach, and recovering it now.

    pytest-chaos status                              every daemon on this machine: its version, what is in force
    pytest-chaos status --backend kubernetes         every node's daemon in a cluster
    pytest-chaos recover --all                       recover everything in force
    pytest-chaos recover ID [ID ...]                 recover these injections

In a cluster, pods a pod-failure left running the pause image (its runner
died before recovering it) are listed and recovered too: they are found
through the API by the record pod-failure keeps on each pod.

On this machine the daemons are found in /proc (the embedded daemons of
running pytest sessions, and any other ``pytest-chaos-daemon`` listening on a
unix socket); ``--daemon ADDRESS`` adds one (TCP needs ``--daemon-certs`` or
``--insecure``, as the plugin's options). In a cluster, the daemon pods are
listed through the API and reached as the plugin reaches them, with the
client certificate from their namespace.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Sequence

from . import pod_failure
from .api.v1 import chaos_daemon_pb2 as pb
from .api.version import VERSION
from .backends.kubernetes import KubernetesBackend
from .defaults import ACCESS_MODES, DEFAULT_DAEMON_NAMESPACE
from .errors import ChaosError
from .handshake import DAEMON, HANDSHAKE_SINCE, DaemonInfo
from .transport import ClientTls, DaemonClient

DAEMON_MODULE = "pytest_chaos_daemon"
LIVE = (pb.InjectionStatus.ACTIVE,)
STATES = {value: name.lower().replace("_", "-") for name, value in pb.InjectionStatus.State.items()}


def local_daemons() -> list[str]:
    """Addresses of the daemons running on this machine that listen on a unix socket, from /proc."""
    found: list[str] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
        except OSError:
            continue
        if not any(a == DAEMON_MODULE or a.endswith("/pytest-chaos-daemon") for a in argv[:3]):
            continue
        for flag, value in zip(argv, argv[1:], strict=False):
            address = value if flag == "--listen" else flag.split("=", 1)[1] if flag.startswith("--listen=") else ""
            if address.startswith("unix://") and address not in found:
                found.append(address)
    return sorted(found)


def _cluster(args: argparse.Namespace) -> KubernetesBackend:
    return KubernetesBackend(kubeconfig=args.kubeconfig, context=args.context,
                             daemon_namespace=args.daemon_namespace, access=args.access)


def _pod_failures(args: argparse.Namespace) -> list[tuple[str, str, str, str, str, str]]:
    """(injection, pod, state, applied, expires, owner) of each pod-failure in force in the cluster."""
    if args.backend != "kubernetes":
        return []
    now = time.time()
    rows = []
    for pod, record in pod_failure.failed_pods(_cluster(args)):
        name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        for holder in sorted(record.holders.values(), key=lambda h: h.applied_at):
            # Overdue: its duration ran out and nobody recovered it (its runner died).
            state = "active" if holder.expires_at > now else "overdue"
            rows.append((holder.injection_id, name, state, _when_s(holder.applied_at), _when_s(holder.expires_at),
                         holder.owner))
    return rows


def _daemons(args: argparse.Namespace) -> list[tuple[str, DaemonClient]]:
    """(where, client) for every daemon the arguments name."""
    if args.backend == "kubernetes":
        backend = _cluster(args)
        cluster_tls = backend.client_tls()
        return [(f"node {node}", DaemonClient(address, args.timeout, tls=cluster_tls))
                for node, address in backend.daemons()]
    tls = _read_tls(args.daemon_certs) if args.daemon_certs else None
    addresses = [*local_daemons(), *args.daemon]
    for address in args.daemon:
        if not address.startswith("unix://") and tls is None and not args.insecure:
            raise ChaosError(f"--daemon {address} is TCP, and TCP means mutual TLS: pass --daemon-certs DIR "
                             f"(ca.crt, client.crt, client.key), or --insecure for a daemon started with --insecure")
    return [(address, DaemonClient(address, args.timeout, tls=None if address.startswith("unix://") else tls))
            for address in dict.fromkeys(addresses)]


def _read_tls(directory: str) -> ClientTls:
    try:
        read = {name: open(os.path.join(directory, name), "rb").read() for name in ("ca.crt", "client.crt", "client.key")}
    except OSError as err:
        raise ChaosError(f"--daemon-certs {directory}: {err}") from None
    return ClientTls(cert=read["client.crt"], key=read["client.key"], ca=read["ca.crt"])


def _when(stamp: object) -> str:
    return _when_s(getattr(stamp, "seconds", 0))


def _when_s(seconds: float) -> str:
    if not seconds:
        return "-"
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def status(args: argparse.Namespace) -> int:
    daemons = _daemons(args)
    if not daemons:
        print("no chaos daemon found" + (" on this machine (pass --daemon ADDRESS for another)"
                                          if args.backend == "local" else ""))
        return 0
    rows = [("DAEMON", "INJECTION", "KIND", "TARGET", "STATE", "APPLIED", "EXPIRES", "OWNER")]
    described: list[str] = []
    unreachable = 0
    for where, client in daemons:
        try:
            described.append(f"{where}: {_describe(client)}")
            injections = client.list_injections(include_ended=args.ended)
        except ChaosError as err:
            print(f"{where}: {err}", file=sys.stderr)
            unreachable += 1
            continue
        finally:
            client.close()
        for status_ in injections:
            rows.append((where, status_.injection_id, status_.kind, status_.container_id, STATES[status_.state],
                         _when(status_.applied_at), _when(status_.expires_at), status_.owner))
    try:
        for injection, pod, state, applied, expires, owner in _pod_failures(args):
            rows.append(("api server", injection, "pod-failure", pod, state, applied, expires, owner))
    except ChaosError as err:
        print(f"api server: {err}", file=sys.stderr)
        unreachable += 1
    for line in described:  # each daemon's version and node, above what it holds
        print(line)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    live = sum(1 for row in rows[1:] if row[4] in ("active", "overdue"))
    print(f"{live} injection(s) in force on {len(daemons) - unreachable} daemon(s)"
          + (f"; {unreachable} daemon(s) unreachable" if unreachable else ""))
    return 1 if unreachable or (args.expect_none and live) else 0


def _describe(client: DaemonClient) -> str:
    """The daemon's version and node (GetInfo), or that it predates the handshake."""
    reply = client.get_info()
    if reply is None:
        return f"{DAEMON} older than {HANDSHAKE_SINCE} (no GetInfo; upgrade it to {VERSION})"
    return DaemonInfo.from_reply(client.address, reply).describe()


def recover(args: argparse.Namespace) -> int:
    if not args.all and not args.ids:
        raise ChaosError("name the injections to recover (see `pytest-chaos status`), or pass --all")
    wanted = set(args.ids)
    failed = 0
    done: set[str] = set()
    for where, client in _daemons(args):
        try:
            live = [s.injection_id for s in client.list_injections() if s.state in LIVE]
            ids = live if args.all else [i for i in live if i in wanted]
            for result in client.recover(ids) if ids else []:
                done.add(result.injection_id)
                ok = result.state in (pb.InjectionStatus.RECOVERED, pb.InjectionStatus.EXPIRED)
                failed += not ok
                print(f"{where}: {result.injection_id} {result.kind} {result.container_id}: "
                      f"{STATES[result.state]} ({result.detail})")
        except ChaosError as err:
            print(f"{where}: {err}", file=sys.stderr)
            failed += 1
        finally:
            client.close()
    if args.backend == "kubernetes":
        failed += _recover_pod_failures(args, wanted, done)
    for missing in sorted(wanted - done):
        print(f"{missing}: no daemon holds it in force", file=sys.stderr)
        failed += 1
    if not done and args.all:
        print("nothing was in force")
    return 1 if failed else 0


def _recover_pod_failures(args: argparse.Namespace, wanted: set[str], done: set[str]) -> int:
    """Recover the pod-failures in force (all, or those ``wanted``); the number that failed."""
    failed = 0
    try:
        cluster = _cluster(args)
        for pod, record in pod_failure.failed_pods(cluster):
            namespace, name, uid = pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"]
            for injection in sorted(record.holders):
                if not args.all and injection not in wanted:
                    continue
                done.add(injection)
                try:
                    detail = pod_failure.restore_pod(cluster, namespace, name, uid, injection)
                    print(f"api server: {injection} pod-failure {namespace}/{name}: recovered ({detail})")
                except ChaosError as err:
                    failed += 1
                    print(f"api server: {injection} pod-failure {namespace}/{name}: failed ({err})")
    except ChaosError as err:
        print(f"api server: {err}", file=sys.stderr)
        failed += 1
    return failed


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pytest-chaos", description=__doc__.split("\n\n")[0],
                                  epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    commands = top.add_subparsers(dest="command", required=True)
    for name, helptext in (("status", "list the injections the daemons hold"),
                           ("recover", "recover injections now")):
        command = commands.add_parser(name, help=helptext, description=helptext)
        command.add_argument("--backend", choices=("local", "kubernetes"), default="local",
                             help="daemons on this machine (default), or every node's in a cluster")
        command.add_argument("--daemon", action="append", default=[], metavar="ADDRESS",
                             help="local: one more daemon, unix:///path or host:port (repeatable)")
        command.add_argument("--daemon-certs", metavar="DIR", help="local TCP daemons: ca.crt, client.crt, client.key")
        command.add_argument("--insecure", action="store_true", help="local TCP daemons started with --insecure")
        command.add_argument("--kubeconfig", help="kubernetes: the kubeconfig (default: $KUBECONFIG, ~/.kube/config)")
        command.add_argument("--context", help="kubernetes: the kubeconfig context")
        command.add_argument("--daemon-namespace", default=DEFAULT_DAEMON_NAMESPACE,
                             help=f"kubernetes: where the daemons run (default {DEFAULT_DAEMON_NAMESPACE})")
        command.add_argument("--access", choices=ACCESS_MODES, default="auto",
                             help="kubernetes: reach daemons at their pod IPs, through port-forwards, or whichever works")
        command.add_argument("--timeout", type=float, default=30.0, help="seconds per call to a daemon (default 30)")
        if name == "status":
            command.add_argument("--ended", action="store_true", help="also the injections that ended lately")
            command.add_argument("--expect-none", action="store_true",
                                 help="exit 1 when any injection is in force (a CI check that nothing was left)")
        else:
            command.add_argument("--all", action="store_true", help="every injection in force")
            command.add_argument("ids", nargs="*", metavar="ID", help="injection ids, as `status` lists them")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return status(args) if args.command == "status" else recover(args)
    except ChaosError as err:
        print(f"pytest-chaos: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
