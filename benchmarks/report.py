"""What every benchmark returns, and the one table ``benchmarks/run.py`` prints.

A benchmark module exposes ``rows(quick: bool) -> list[Row]``: each row is
one measured figure, with the baseline it was measured against in the same
run and the goal from the project's performance targets. Ratios are what is
compared: absolute times vary on a shared machine, ratios much less.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any


@dataclass(frozen=True)
class Row:
    what: str
    measured: str  # the figure itself, with its unit ("3.21 ms", "41 MB")
    baseline: str = ""  # what it was measured against, with its figure ("nsenter 2.90 ms")
    ratio: float | None = None  # measured / baseline, where that means something
    goal: str = ""  # the target, as the issue words it ("<= 1.3x", "<= 1 s")
    met: bool | None = None  # None: no goal, or reported only

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: ""}[self.met]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def table(rows: Sequence[Row]) -> str:
    header = ("what", "measured", "baseline", "ratio", "goal", "")
    cells = [header] + [
        (r.what, r.measured, r.baseline, "" if r.ratio is None else f"{r.ratio:.2f}x", r.goal, r.verdict) for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> str:
    """Cores, kernel, Python and container runtime versions, and the date: what a figure depends on."""
    parts = [
        datetime.date.today().isoformat(),
        f"{os.cpu_count()} core{'s' if os.cpu_count() != 1 else ''}",
        f"kernel {platform.release()}",
        f"Python {platform.python_version()}",
    ]
    for name, argv in (("containerd", ["containerd", "--version"]), ("runc", ["runc", "--version"]),
                       ("docker", ["docker", "version", "--format", "{{.Server.Version}}"])):
        parts.append(f"{name} {_version(argv)}")
    return ", ".join(parts)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    for word in out.split():
        if word.lstrip("v")[:1].isdigit():
            return word.lstrip("v")
    return "unknown"


def print_rows(title: str, rows: Sequence[Row]) -> None:
    print(title)
    print(machine())
    print(table(rows))
    sys.stdout.flush()


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the ``finally`` blocks remove what a benchmark started."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def run_main(doc: str, title: str, rows: Callable[..., list[Row]], quick_help: str,
             *options: tuple[str, dict[str, Any]]) -> int:
    """A benchmark module's command line: ``--quick`` and ``options``, passed to ``rows`` by name; one table."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    for flag, settings in options:
        parser.add_argument(flag, **settings)
    arguments = vars(parser.parse_args())
    exit_on_sigterm()
    print_rows(title, rows(arguments.pop("quick"), **arguments))
    return 0
