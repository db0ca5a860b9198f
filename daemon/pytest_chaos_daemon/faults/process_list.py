"""Parsing the output of ``ps aux`` (procps) and ``ps`` (busybox) into rows."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ProcessRow:
    pid: int
    user: str
    command: str


def parse_ps(output: str) -> list[ProcessRow]:
    """Rows of a ps listing. procps prints ``USER PID ... COMMAND``; busybox ``PID USER TIME COMMAND``."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0].split()
    if "PID" not in header or header[-1] not in ("COMMAND", "CMD"):
        raise ValueError(f"not a ps listing: {lines[0]!r}")
    pid_col, user_col = header.index("PID"), header.index("USER")
    command_col = len(header) - 1
    rows = []
    for line in lines[1:]:
        fields = line.split(None, command_col)
        if len(fields) <= command_col:
            continue
        rows.append(ProcessRow(pid=int(fields[pid_col]), user=fields[user_col], command=fields[command_col]))
    return rows
