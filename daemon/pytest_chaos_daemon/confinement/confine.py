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


def _source_build_name(source: Path = SOURCE, name: str = NAME) -> str:
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    return f"{name}-{digest}"


def helper_path() -> str:
    """The helper shipped in the wheel, or, in a source checkout, the build of the current source."""
    return native_path(SOURCE, NAME, "pytest_chaos_daemon.confinement.confine", ", or pass --confine-helper")


def native_path(source: Path, name: str, builder: str, hint: str = "") -> str:
    """A native program of the daemon's (``name``, from ``source``): the wheel's, or in a source checkout
    the build of the current source, which ``python3 -m <builder>`` makes."""
    packaged = source.parent / name
    if _is_executable(packaged):
        return str(packaged)
    if not source.is_file():
        raise HelperUnavailable(
            f"{packaged} is missing: this pytest-chaos-daemon was installed without its helper; "
            f"reinstall the wheel built for this platform (Linux){hint}"
        )
    built = _source_build_name(source, name)
    for directory in (source.parent, CACHE_DIR):
        if _is_executable(directory / built):
            return str(directory / built)
    raise HelperUnavailable(
        f"{name} is not built for this source: run `python3 -m {builder}` "
        "(needs gcc and static libc: libc6-dev on Debian)"
    )


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def build_helper(target: Path, source: Path = SOURCE, name: str = NAME) -> str:
    """Compile the helper (or another native program of the daemon's, ``name`` from ``source``) to ``target``:
    a static binary, or HelperUnavailable saying what is missing."""
    if not sys.platform.startswith("linux"):
        raise HelperUnavailable(f"{name} uses Linux namespaces, cgroups or ptrace: it builds and runs on Linux "
                                f"only, not on {sys.platform}")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise HelperUnavailable(f"building {name} needs a C compiler and static libc: install gcc and libc6-dev")
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    # Compile to a temporary name, then rename: a concurrent start never runs half a file.
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{name}-")
    os.close(fd)
    try:
        result = subprocess.run([compiler, *COMPILE_FLAGS, "-o", temporary, str(source)],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise HelperUnavailable(f"building {name} failed (static libc comes with libc6-dev):\n{result.stderr}")
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return str(target)


def main() -> int:
    """Build the helper of this source checkout (once per source digest) and print its path."""
    return build_main(SOURCE, NAME, "pytest_chaos_daemon.confinement.confine")


def build_main(source: Path, name: str, builder: str) -> int:
    """``python3 -m <builder>``: build ``name`` from ``source`` in a source checkout (once per digest), print
    its path."""
    try:
        if not source.is_file():
            print(native_path(source, name, builder))
            return 0
        target = source.parent / _source_build_name(source, name)
        if not os.access(source.parent, os.W_OK):
            target = CACHE_DIR / _source_build_name(source, name)
        print(target if _is_executable(target) else build_helper(target, source, name))
    except HelperUnavailable as err:
        print(f"{builder}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
