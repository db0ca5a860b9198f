"""Defaults the plugin's options show, in a module that imports nothing.

The plugin's options (and their ``--help``) are set up in every pytest run of
the environment; the modules these defaults govern (gRPC's transport, the
session) load only in a run that has chaos tests.
"""

from __future__ import annotations

DEFAULT_RPC_TIMEOUT_S = 60.0  # as Chaos Mesh's controller allows each daemon call
DEFAULT_LEASE_S = 30.0
BACKENDS = ("local", "kubernetes")
# The kubernetes backend's: where the daemons run, and how this machine reaches them.
DEFAULT_DAEMON_NAMESPACE = "chaos-testing"
ACCESS_MODES = ("auto", "direct", "port-forward")
