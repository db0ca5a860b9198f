"""Small shared helpers: logging, running commands, checking prerequisites."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

_T0 = time.monotonic()


class ClusterError(RuntimeError):
    """An error with a message meant for the user (no traceback needed)."""


def log(msg: str) -> None:
    """Print a progress line to stderr, prefixed with seconds since start."""
    sys.stderr.write(f"[{time.monotonic() - _T0:6.1f}s] {msg}\n")
    sys.stderr.flush()


def run(cmd: Sequence[str], *, check: bool = True, capture: bool = True,
        input: str | bytes | None = None, timeout: float | None = None,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise ClusterError with its output."""
    text_input = input.decode() if isinstance(input, bytes) else input
    try:
        proc = subprocess.run(list(cmd), check=False, capture_output=capture, text=True,
                              input=text_input, timeout=timeout,
                              env=dict(env) if env is not None else None)
    except FileNotFoundError as exc:
        raise ClusterError(f"command not found: {cmd[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        if check:
            raise ClusterError(f"command timed out after {timeout}s: {' '.join(cmd)}") from exc
        return subprocess.CompletedProcess(list(cmd), 124, "", f"timed out after {timeout}s")
    if check and proc.returncode != 0:
        out = ((proc.stdout or "") + (proc.stderr or "")).strip()
        raise ClusterError(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{out[-4000:]}")
    return proc


def require_tools(tools: Mapping[str, str]) -> None:
    """Raise ClusterError naming the package to install for each missing tool.

    ``tools`` maps an executable name to the Debian package (or hint) providing it.
    """
    missing = {t: pkg for t, pkg in tools.items() if shutil.which(t) is None}
    if missing:
        lines = [f"  {t}: install {pkg}" for t, pkg in missing.items()]
        raise ClusterError("missing prerequisites:\n" + "\n".join(lines))
