"""Every benchmark of the project's performance targets, as one table with ratios.

Each row is measured against its baseline in the same run (see
``benchmarks/report.py``); absolute times vary on shared machines, ratios
much less. Rows with a goal say whether this run met it. Nothing is asserted
on a figure: a benchmark fails only when what it measures did not work.

Run as root with containerd, Docker and the test cluster up (scripts/setup.sh):

    python3 benchmarks/run.py            # the full rows (about 10 minutes)
    python3 benchmarks/run.py --quick    # short versions of each (a few minutes)
    python3 benchmarks/run.py --only helloworld_latency,fan_out
    python3 benchmarks/run.py --kubeconfig PATH   # the cluster rows measure that cluster

The cluster rows take the cluster from --kubeconfig, else $PYTEST_CHAOS_KUBECONFIG
or $KUBECONFIG, else the test bed's (when its tool, pytest_chaos_cluster, is
installed and its cluster up). With none, they are reported skipped, saying
why; under CI=true that is a failure.

Exits non-zero if any benchmark failed to run; its error is printed and the
others still run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback

if __package__ in (None, ""):  # run as a script: the repository root is the import root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.cluster import NoCluster, kubeconfig  # noqa: E402
from benchmarks.report import Row, machine, table  # noqa: E402

# In the order of the performance targets: per target, fan-out, selection, cluster, plugin, collection, memory
# (the daemon's, then its in-namespace programs'), the recoverable kinds, netem against the packet queue, and
# the tcp-* kinds' proxy against a direct connection.
BENCHMARKS = (
    "helloworld_latency",
    "fan_out",
    "selection_scale",
    "backend_latency",
    "plugin_overhead",
    "collection_cost",
    "unused_plugin",
    "daemon_memory",
    "program_memory",
    "daemon_load",
    "lifecycle_latency",
    "restart_to_serving",
    "netem_throughput",
    "tcp_proxy_throughput",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--quick", action="store_true", help="the short version of every benchmark")
    parser.add_argument("--only", default="", help=f"comma-separated benchmarks to run (of: {', '.join(BENCHMARKS)})")
    parser.add_argument("--kubeconfig", help="the cluster of the cluster rows. Default: $PYTEST_CHAOS_KUBECONFIG, "
                                             "$KUBECONFIG, then the test bed's")
    args = parser.parse_args()
    chosen = [name for name in args.only.split(",") if name] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if os.geteuid() != 0:
        parser.error("run as root: the daemon enters other processes' namespaces")

    rows: list[Row] = []
    failed: list[str] = []
    started = time.monotonic()
    for number, name in enumerate(chosen, 1):
        print(f"[{number}/{len(chosen)}] {name}{' --quick' if args.quick else ''} ...", file=sys.stderr, flush=True)
        began = time.monotonic()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            if getattr(module, "NEEDS_CLUSTER", False):
                produced = module.rows(args.quick, kubeconfig=kubeconfig(args.kubeconfig))
            else:
                produced = module.rows(args.quick)
        except NoCluster as err:
            print(f"[{number}/{len(chosen)}] {name}: {err}", file=sys.stderr, flush=True)
            if os.environ.get("CI") == "true":  # CI brings a cluster up: none is a failure there
                failed.append(name)
                rows.append(Row(f"{name}: FAILED ({err})"[:160], ""))
            else:
                rows.append(Row(f"{name}: skipped ({err})"[:160], ""))
            continue
        except (Exception, SystemExit) as err:  # one broken benchmark does not hide the others' figures
            traceback.print_exception(err, file=sys.stderr)
            failed.append(name)
            rows.append(Row(f"{name}: FAILED ({type(err).__name__}: {err})"[:160], ""))
            continue
        rows.extend(produced)
        print(f"[{number}/{len(chosen)}] {name} took {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)

    print(f"pytest-chaos benchmarks{' (--quick)' if args.quick else ''}, {time.monotonic() - started:.0f} s")
    print(machine())
    print(table(rows))
    missed = [r.what for r in rows if r.met is False]
    print(f"\n{sum(r.met is True for r in rows)} goals met, {len(missed)} missed"
          f"{'; failed to run: ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
