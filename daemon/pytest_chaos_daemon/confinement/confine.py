"""The confine helper: a small static program that runs one program inside a
target's namespaces and cgroups, as the target's user, with at most the
target's capabilities (source and details: ``native/confine.c``).

It is C because it must enter a user and a mount namespace (which a
multi-threaded process cannot) and drop privileges before exec, in a process
that never loads anything from the target's filesystem. Static, so it runs
the same on every node.

It is built when the wheel is built (daemon/setup.py) and shipped in it as
``native/pytest-chaos-confine``: the daemon never compiles anything at run time.
In a source checkout, ``python3 -m pytest_chaos_daemon.confinement.confine`` builds it
beside the source, named by the source's digest (needs a C compiler and static
libc: Debian's gcc and libc6-dev), and prints its path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).parent.parent / "native" / "confine.c"
NAME = "pytest-chaos-confine"
PACKAGED = SOURCE.parent / NAME  # where the wheel carries it
CACHE_DIR = Path("/var/cache/pytest-chaos/confine")
COMPILE_FLAGS = ["-O2", "-static", "-Wall", "-Wextra", "-Werror"]


class HelperUnavailable(RuntimeError):
    """No build of the helper exists and none can be made here."""


def _source_build_name() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    return f"{NAME}-{digest}"


def helper_path() -> str:
    """The helper shipped in the wheel, or, in a source checkout, the build of the current source."""
    if _is_executable(PACKAGED):
        return str(PACKAGED)
    if not SOURCE.is_file():
        raise HelperUnavailable(
            f"{PACKAGED} is missing: this pytest-chaos-daemon was installed without its helper; "
            "reinstall the wheel built for this platform (Linux), or pass --confine-helper"
        )
    name = _source_build_name()
    for directory in (SOURCE.parent, CACHE_DIR):
        if _is_executable(directory / name):
            return str(directory / name)
    raise HelperUnavailable(
        f"{NAME} is not built for this source: run `python3 -m pytest_chaos_daemon.confinement.confine` "
        "(needs gcc and static libc: libc6-dev on Debian)"
    )


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def build_helper(target: Path) -> str:
    """Compile the helper to ``target``: a static binary, or HelperUnavailable saying what is missing."""
    if not sys.platform.startswith("linux"):
        raise HelperUnavailable(f"{NAME} enters Linux namespaces and cgroups: it builds and runs on Linux only, "
                                f"not on {sys.platform}")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise HelperUnavailable(f"building {NAME} needs a C compiler and static libc: install gcc and libc6-dev")
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    # Compile to a temporary name, then rename: a concurrent start never runs half a file.
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{NAME}-")
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
    """Build the helper of this source checkout (once per source digest) and print its path."""
    try:
        if not SOURCE.is_file():
            print(helper_path())
            return 0
        target = SOURCE.parent / _source_build_name()
        if not os.access(SOURCE.parent, os.W_OK):
            target = CACHE_DIR / _source_build_name()
        print(target if _is_executable(target) else build_helper(target))
    except HelperUnavailable as err:
        print(f"pytest_chaos_daemon.confinement.confine: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
