"""The background load of ``scripts/loaded-runs.sh`` (a ``stress-ng --cpu 2`` beside the tests), which the
tests that count stress-ng processes leave out: it carries ``PYTEST_CHAOS_BACKGROUND_LOAD=1`` in its
environment, and stress-ng writes its workers' titles over theirs, so a worker is known by its parent's."""

from __future__ import annotations

import inspect
import os


def stress_ng_pids(zombies: bool = True) -> list[int]:
    """Every stress-ng process on this machine (stress-ng names its workers stress-ng-cpu, stress-ng-vm, ...),
    the background load aside; zombies too unless ``zombies`` is false. Self-contained: a user's suite that
    pytester runs gets its source (``STRESS_NG_PIDS_SOURCE``)."""
    def marked(pid: str) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                return b"PYTEST_CHAOS_BACKGROUND_LOAD=1" in f.read().split(b"\0")
        except OSError:
            return False

    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state, parent = f.read().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if comm.startswith("stress-ng") and (zombies or state != "Z") and not marked(entry) and not marked(parent):
            found.append(int(entry))
    return found


# For a user's suite that pytester runs, which cannot import this package.
STRESS_NG_PIDS_SOURCE = "import os\n\n\n" + inspect.getsource(stress_ng_pids) + "\n\n"
