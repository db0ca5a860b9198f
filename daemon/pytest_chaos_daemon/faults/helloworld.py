"""HelloWorldChaos: list the target's processes from inside its namespaces.

Runs ``sh -c "ps aux"`` in the target's mount and pid namespaces. The pid
namespace matters: procps' ps needs a /proc that matches its pid namespace.
One-shot: there is nothing to recover.
"""

from __future__ import annotations

import logging

from ..logs import log
from ..nsexec import ChildProcesses, Completed, build_argv, explain_failure
from .process_list import ProcessRow, parse_ps

PROBE = ("sh", "-c", "ps aux")
NAMESPACES = ("mnt", "pid")
# The probe's own processes. busybox's sh runs ps in-process, which busybox's
# ps then shows as "{ps} sh -c ps aux"; procps' sh forks "ps aux".
PROBE_COMMANDS = frozenset({"sh -c ps aux", "ps aux", "{ps} sh -c ps aux"})


async def exec_hello_world(
    children: ChildProcesses, container_id: str, pid: int, timeout_s: float
) -> tuple[str, list[ProcessRow]]:
    argv = build_argv(pid, NAMESPACES, PROBE)
    log(logging.INFO, "command built", container_id=container_id, pid=pid, argv=argv)
    result: Completed = await children.run(argv, timeout_s)
    if result.returncode != 0:
        raise explain_failure(result, container_id, needs="`sh` and `ps`")
    log(logging.INFO, "output", container_id=container_id, pid=pid, output=result.stdout)
    try:
        rows = parse_ps(result.stdout)
    except ValueError as err:
        raise explain_failure(
            Completed(argv, 1, result.stdout, f"unexpected ps output: {err}"), container_id, "`ps`"
        ) from None
    return result.stdout, [row for row in rows if row.command not in PROBE_COMMANDS]
