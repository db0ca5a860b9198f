"""Parsing real ``ps`` output from both implementations a target may ship."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from pytest_chaos_daemon.confinement.nsexec import CHILD_ENV
from pytest_chaos_daemon.faults.process_list import parse_ps

from tests.support.targets import require


def test_parses_procps_ps_aux():
    output = subprocess.check_output(["ps", "aux"], text=True, env=CHILD_ENV)
    rows = parse_ps(output)
    assert any(row.pid == os.getpid() and "pytest" in row.command for row in rows)
    assert all(row.user for row in rows)


def test_parses_busybox_ps():
    busybox = shutil.which("busybox") or "/bin/busybox"
    require(os.path.exists(busybox), "busybox-static")
    output = subprocess.check_output([busybox, "ps", "aux"], text=True, env=CHILD_ENV)
    rows = parse_ps(output)
    mine = next(row for row in rows if row.pid == os.getpid())
    assert "pytest" in mine.command


def test_keeps_spaces_inside_commands():
    output = "USER PID %CPU %MEM VSZ RSS TTY STAT START TIME COMMAND\nroot 1 0.0 0.0 1 1 ? S 10:00 0:00 sleep  36 00\n"
    [row] = parse_ps(output)
    assert (row.pid, row.user, row.command) == (1, "root", "sleep  36 00")


def test_rejects_output_that_is_not_a_listing():
    with pytest.raises(ValueError):
        parse_ps("Error, do this: mount -t proc proc /proc\n")
