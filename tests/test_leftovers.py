"""The end-of-session check finds what a run orphaned, and only that."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.support.leftovers import boot_ticks_now, orphans_since
from tests.support.targets import running, wait_for

pytestmark = pytest.mark.needs_root


def test_an_orphaned_target_is_found_and_a_process_of_this_namespace_is_not():
    start = boot_ticks_now() - 1
    # A target whose unshare dies: its child (PID 1 of a pid namespace) is left to init.
    outer = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sleep", "5201"])
    # A daemonized process of this pid namespace (double fork): init adopts it too, and it is not a target.
    subprocess.run(["setsid", "--fork", "sleep", "5202"], check=True)
    try:
        [inner] = wait_for(lambda: [p for p in running("sleep 5201") if p != outer.pid], "the target to start")
        outer.send_signal(signal.SIGKILL)
        outer.wait()
        wait_for(lambda: open(f"/proc/{inner}/stat").read().rsplit(")", 1)[1].split()[1] == "1", "init to adopt it")
        found = [pid for pid, _ in orphans_since(start)]
        assert inner in found
        assert not set(running("sleep 5202")) & set(found)
    finally:
        for pid in running("sleep 5201") + running("sleep 5202"):
            os.kill(pid, signal.SIGKILL)
