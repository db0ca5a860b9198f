"""pytest-chaos's node daemon: resolves containers to PIDs and injects faults.

Run it with the ``pytest-chaos-daemon`` console script; see ``cli.py``.
"""
