"""The one version of both distributions (pytest-chaos and pytest-chaos-daemon), which release together.

Both pyproject files read it; the handshake compares the plugin's with the daemon's."""

VERSION = "0.2.0"
