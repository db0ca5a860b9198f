"""The confine helper: a small static program that runs one program inside a
target's namespaces and cgroups, as the target's user, with at most the
target's capabilities (source and details: ``native/confine.c``).

It is C because it must enter a user and a mount namespace (which a
multi-threaded process cannot) and drop privileges before exec, in a process
that never loads anything from the target's filesystem. Static, so it runs
the same on every node.

``python3 -m pytest_chaos_daemon.confine`` builds it (needs a C compiler and
static libc: Debian's gcc and libc6-dev) and prints its path. The daemon
looks for a build of the current source beside the source, then in the cache
directory, and builds it there when it has a compiler.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).parent / "native" / "confine.c"
NAME = "pytest-chaos-confine"
CACHE_DIR = Path("/var/cache/pytest-chaos/confine")
COMPILE_FLAGS = ["-O2", "-static", "-Wall", "-Wextra", "-Werror"]


class HelperUnavailable(RuntimeError):
    """No build of the helper exists and none can be made here."""


def _binary_name() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    return f"{NAME}-{digest}"


def helper_path(build: bool = True) -> str:
    """The helper built from the current source, building it if needed and allowed."""
    name = _binary_name()
    for directory in (SOURCE.parent, CACHE_DIR):
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    if not build:
        raise HelperUnavailable(f"no build of {NAME} for this source in {SOURCE.parent} or {CACHE_DIR}")
    return build_helper()


def build_helper(out_dir: Path | None = None) -> str:
    """Compile the helper into ``out_dir`` (default: beside the source if writable, else the cache)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise HelperUnavailable(
            f"{NAME} is not built and there is no C compiler: install gcc and libc6-dev, "
            "then run `python3 -m pytest_chaos_daemon.confine`"
        )
    if out_dir is None:
        out_dir = SOURCE.parent if os.access(SOURCE.parent, os.W_OK) else CACHE_DIR
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    target = out_dir / _binary_name()
    # Compile to a temporary name, then rename: a concurrent start never runs half a file.
    fd, temporary = tempfile.mkstemp(dir=out_dir, prefix=f".{NAME}-")
    os.close(fd)
    try:
        result = subprocess.run([compiler, *COMPILE_FLAGS, "-o", temporary, str(SOURCE)],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise HelperUnavailable(f"building {NAME} failed (static libc comes with libc6-dev):\n{result.stderr}")
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return str(target)


def main() -> int:
    try:
        print(helper_path())
    except HelperUnavailable as err:
        print(f"pytest_chaos_daemon.confine: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
