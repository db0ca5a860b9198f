"""The cluster a benchmark measures: the one it is given, else the test bed's.

The test bed's tool (``pytest_chaos_cluster``, in cluster/) is a distribution
of its own, and may not be installed: it is asked, lazily, only when no
kubeconfig is given.
"""

from __future__ import annotations

import os

ENVIRONMENT = ("PYTEST_CHAOS_KUBECONFIG", "KUBECONFIG")


class NoCluster(Exception):
    """No cluster to measure; the message says what was looked for."""


def kubeconfig(given: str | None = None) -> str:
    """``given`` (a --kubeconfig), else $PYTEST_CHAOS_KUBECONFIG, else $KUBECONFIG (its first file), else the
    kubeconfig the test bed wrote (``pytest-chaos-cluster up``). Raises NoCluster when none is there."""
    for source, value in (("--kubeconfig", given), *((f"${name}", os.environ.get(name)) for name in ENVIRONMENT)):
        if value:
            path = value.split(os.pathsep)[0]
            if not os.path.isfile(path):
                raise NoCluster(f"{source} names {path}, which is not a file")
            return path
    try:
        from pytest_chaos_cluster.settings import Layout
    except ImportError:
        raise NoCluster("no cluster: pass --kubeconfig or set KUBECONFIG (the test bed's tool, pytest_chaos_cluster, "
                        "is not installed to find its own)") from None
    bed = str(Layout().kubeconfig)
    if not os.path.isfile(bed):
        raise NoCluster(f"no cluster: pass --kubeconfig or set KUBECONFIG, or bring the test bed up "
                        f"(pytest-chaos-cluster up; its kubeconfig {bed} is absent)")
    return bed
