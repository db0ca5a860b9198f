"""Stress-ng processes that are not this test's: the background load of ``scripts/loaded-runs.sh`` (a
``stress-ng --cpu 2`` beside the tests, with ``PYTEST_CHAOS_BACKGROUND_LOAD=1`` in its environment) and another
pytest-xdist worker's stressors (their daemon has that worker's ``PYTEST_XDIST_WORKER``). The tests that count
stress-ng processes leave both out. stress-ng writes its workers' titles over their environment, so a process is
known by its ancestors' environments."""

from __future__ import annotations

import inspect
import os


def stress_ng_pids(zombies: bool = True) -> list[int]:
    """Every stress-ng process on this machine (stress-ng names its workers stress-ng-cpu, stress-ng-vm, ...)
    but the background load and another xdist worker's; zombies too unless ``zombies`` is false. A stressor
    orphaned to init counts: it may be this test's. Self-contained: a user's suite that pytester runs gets its
    source (``STRESS_NG_PIDS_SOURCE``)."""
    own_worker = os.environ.get("PYTEST_XDIST_WORKER", "").encode()

    def parent_of(pid: str) -> str | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[1]
        except (OSError, ValueError, IndexError):
            return None

    def not_ours(pid: str) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            return False
        if b"PYTEST_CHAOS_BACKGROUND_LOAD=1" in environ:
            return True
        worker = next((v.split(b"=", 1)[1] for v in environ if v.startswith(b"PYTEST_XDIST_WORKER=")), None)
        return worker is not None and worker != own_worker

    def foreign(pid: str) -> bool:
        ancestor: str | None = pid
        while ancestor not in (None, "0", "1"):
            if not_ours(ancestor):
                return True
            ancestor = parent_of(ancestor)
        return False

    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            continue
        if comm.startswith("stress-ng") and (zombies or state != "Z") and not foreign(entry):
            found.append(int(entry))
    return found


# For a user's suite that pytester runs, which cannot import this package.
STRESS_NG_PIDS_SOURCE = "import os\n\n\n" + inspect.getsource(stress_ng_pids) + "\n\n"
