"""The plugin's command-line and ini options, and reading them.

Light by design: options are added in every pytest run of the environment,
chaos tests or not.
"""

from __future__ import annotations

from typing import Any

import pytest

from .api.contract import CONTAINERD_SOCKET, DOCKER_SOCKET
from .defaults import ACCESS_MODES, BACKENDS, DEFAULT_DAEMON_NAMESPACE, DEFAULT_LEASE_S, DEFAULT_RPC_TIMEOUT_S

OPTIONS: list[tuple[str, dict[str, Any], str]] = [
    # (option, argparse kwargs, help)
    ("--chaos-backend", {"choices": BACKENDS}, "where targets come from. Default: local"),
    ("--chaos-daemon", {"metavar": "ADDRESS"},
     "use the chaos daemon already running at ADDRESS (unix:///PATH or HOST:PORT) instead of "
     "starting one on a private unix socket for this run"),
    ("--chaos-daemon-certs", {"metavar": "DIR"},
     "with --chaos-daemon over TCP: mutual TLS with the client certificate in DIR "
     "(ca.crt, client.crt, client.key, as pytest-chaos-daemon-certs writes them)"),
    # store_const, not store_true: an absent flag must be None, so the ini value applies.
    ("--chaos-daemon-insecure", {"action": "store_const", "const": "true"},
     "with --chaos-daemon=HOST:PORT: talk plaintext to a daemon started with --insecure (no mutual TLS); "
     "for trusted test machines only. Ini: true/1/yes"),
    ("--chaos-seed", {"metavar": "INT"},
     "seed for the random picks of modes one/fixed/fixed-percent/random-max-percent; the seed in use "
     "is printed in the header, so a run can be repeated. Default: a fresh random seed"),
    ("--chaos-timeout", {"metavar": "SECONDS"}, f"per-call timeout talking to a daemon. Default: {DEFAULT_RPC_TIMEOUT_S:g}"),
    ("--chaos-lease", {"metavar": "SECONDS"},
     "a daemon recovers a fault by itself when this run stops renewing it for this long (this run died, "
     f"say); renewed every third of it while the run lives. Default: {DEFAULT_LEASE_S:g}"),
    ("--chaos-report", {"metavar": "PATH"},
     "write the run's experiment timeline to PATH: one self-contained HTML page, a row per test and a bar per "
     "experiment from applied to recovered, its targets and output on click"),
    ("--chaos-dry-run", {"action": "store_const", "const": "true"},
     "select and report the targets each chaos experiment would hit, inject nothing, and skip its test "
     "(a test whose chaos did not happen must not pass). Ini: true/1/yes"),
    ("--chaos-containerd-socket", {"metavar": "PATH"},
     f"local backend, the daemon it starts: containerd's socket. Default: {CONTAINERD_SOCKET}"),
    ("--chaos-containerd-namespace", {"metavar": "NAMES"},
     "local backend, the daemon it starts: comma-separated containerd namespaces to select containers from. "
     "Default: all"),
    ("--chaos-docker-socket", {"metavar": "PATH"},
     f"local backend, the daemon it starts: Docker Engine's socket. Default: {DOCKER_SOCKET}"),
    ("--chaos-kubeconfig", {"metavar": "PATH"},
     "kubernetes backend: kubeconfig file. Default: $KUBECONFIG, then ~/.kube/config, then in-cluster"),
    ("--chaos-context", {"metavar": "NAME"}, "kubernetes backend: kubeconfig context. Default: the current one"),
    ("--chaos-daemon-namespace", {"metavar": "NAME"},
     f"kubernetes backend: namespace of the chaos daemon DaemonSet. Default: {DEFAULT_DAEMON_NAMESPACE}"),
    ("--chaos-daemon-access", {"choices": ACCESS_MODES},
     "kubernetes backend: reach each node's daemon at its pod IP (direct), through the API server "
     "(port-forward), or direct when routable and port-forward otherwise (auto). Default: auto"),
]
NAMES = tuple(option.removeprefix("--").replace("-", "_") for option, _, _ in OPTIONS)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos", "chaos experiments (pytest-chaos)")
    for (option, kwargs, help_text), name in zip(OPTIONS, NAMES, strict=True):
        group.addoption(option, dest=name, help=help_text, **kwargs)
        parser.addini(name, f"same as {option}: {help_text}")


def option(config: pytest.Config, name: str, default: str) -> str:
    """The command line's value, else the ini file's, else ``default``."""
    value = config.getoption(name)
    if value is None:
        value = config.getini(name) or default
    return str(value)


def flag(config: pytest.Config, name: str) -> bool:
    value = option(config, name, "false").strip().lower()
    if value not in ("true", "1", "yes", "false", "0", "no", ""):
        raise pytest.UsageError(f"{name}={value!r}: accepted: true/1/yes or false/0/no")
    return value in ("true", "1", "yes")


def given(config: pytest.Config) -> list[str]:
    """The chaos options on this run's command line: asking for chaos whether or not a test does.

    Ini values are a project's standing settings, not a request: they apply once the run has chaos tests."""
    return [f"--{name.replace('_', '-')}" for name in NAMES if config.getoption(name) is not None]
