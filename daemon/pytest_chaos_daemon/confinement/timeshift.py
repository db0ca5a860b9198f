"""The time fault's helper: a small static program that patches one process's vDSO through ptrace, and
puts it back (source and details: ``native/timeshift.c``).

It is C because it stops every thread of the process, makes the process map a
page (an injected mmap), and writes there and over the vDSO's entries: work for
a tracer that holds no interpreter's locks and is done in milliseconds. It runs
as the daemon's child (``ChildProcesses.run``: a timeout, output capped), in the
daemon's own namespaces, and never in the target's: the target gains nothing
from it but the shifted clocks. It only writes what the daemon planned and
journaled (the addresses and the original bytes come on its command line),
after checking that the process still holds them. x86_64 only.

Built as the confine helper is (``confine.py``): into the wheel by
daemon/setup.py as ``native/pytest-chaos-timeshift``, and in a source checkout by
``python3 -m pytest_chaos_daemon.confinement.timeshift``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from . import confine

SOURCE = Path(__file__).parent.parent / "native" / "timeshift.c"
NAME = "pytest-chaos-timeshift"
BUILDER = "pytest_chaos_daemon.confinement.timeshift"
# The helper's exit statuses (timeshift.c).
EXIT_GONE, EXIT_EXECED, EXIT_NOT_AS_PLANNED = 3, 4, 5
# The helper's own limit (TIMEOUT_S in timeshift.c) is below this: it says why before it is killed.
RUN_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one run did: "applied", "restored", "unchanged", "gone" (the process ended), "execed" (it runs
    another program: its patched vDSO is gone), or "refused" (the process is not as planned: ``detail``)."""

    status: str
    detail: str = ""


def helper_path() -> str:
    """The helper shipped in the wheel, or the build of this source checkout; raises confine.HelperUnavailable."""
    return confine.native_path(SOURCE, NAME, BUILDER)


def apply_argv(helper: str, pid: int, vdso: int, page: int, offset_ns: int, mask: int,
               sites: Sequence[tuple[int, str]]) -> list[str]:
    seconds, nanoseconds = divmod(offset_ns, 1_000_000_000)  # nanoseconds in [0, 1e9): the helper's form
    return [helper, "apply", str(pid), f"{vdso:x}", f"{page:x}", str(seconds), str(nanoseconds), f"{mask:x}",
            *_sites(sites)]


def recover_argv(helper: str, pid: int, vdso: int, page: int, sites: Sequence[tuple[int, str]]) -> list[str]:
    return [helper, "recover", str(pid), f"{vdso:x}", f"{page:x}", *_sites(sites)]


def _sites(sites: Sequence[tuple[int, str]]) -> list[str]:
    return [f"{address:x}:{original}" for address, original in sites]


def outcome(returncode: int, stdout: str, stderr: str) -> Outcome:
    """The helper's exit status and output, read."""
    said = stderr.strip().removeprefix("timeshift:").strip()[-500:]
    if returncode == 0:
        words = stdout.split()
        return Outcome(words[0] if words and words[0] in ("applied", "restored", "unchanged") else "applied",
                       stdout.strip())
    if returncode == EXIT_GONE:
        return Outcome("gone", said)
    if returncode == EXIT_EXECED:
        return Outcome("execed", said)
    if returncode == EXIT_NOT_AS_PLANNED:
        return Outcome("refused", said)
    return Outcome("failed", said or f"exit status {returncode}")


def main() -> int:
    """Build the helper of this source checkout (once per source digest) and print its path."""
    return confine.build_main(SOURCE, NAME, BUILDER)


if __name__ == "__main__":
    sys.exit(main())
