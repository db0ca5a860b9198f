"""Boot the VM image under qemu, run one command as root in it, power it off, return its status.

qemu runs ``-accel tcg -smp 1 -nic none``: there is no usable KVM here (a KVM guest never
printed a line), TCG with two vCPUs hung once in a guest soft lockup while runc started a
container, and the guest must not reach any network. The root disk is ``snapshot=on``: writes go
to a temporary overlay in our own temporary directory, so the cached image never changes and
several runs can share it.

The command goes in through fw_cfg as a shell script (no length limit, no quoting through the
kernel command line); guest_init.sh runs it and prints ``PYTEST-CHAOS-VM <nonce> exit <status>``
on the serial console, which streams to our stdout and to a log file. The nonce is new each run
and only on the kernel command line, so nothing the command prints can pass for that line.
A watchdog kills qemu when the guest does not reach its init in time or does not finish within
the timeout; a kernel panic ends qemu at once (``panic=-1`` with ``-no-reboot``). qemu dies with
us (PR_SET_PDEATHSIG), on Ctrl-C and SIGTERM too, and its overlay goes with our temporary directory.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from .. import settings
from ..util import ClusterError, log, require_tools
from .image import GUEST_INIT, Image

MARK = b"PYTEST-CHAOS-VM"
SHARE_TAG = "pytest-chaos"
#: The VM's exit status when it, not the command, failed (as ``docker run``'s own errors).
VM_FAILED = 125
_KEEP_LOGS = 20
_HINTS = ("Kernel panic", "soft lockup", "Out of memory", "hung_task", "BUG:", "Oops")


class VMError(ClusterError):
    """The VM failed (did not boot, timed out, panicked): the command's status is unknown."""

    def __init__(self, message: str, log_file: Path) -> None:
        super().__init__(f"{message}\nconsole log: {log_file}")
        self.log_file = log_file


@dataclass
class _Console:
    """What the guest's console said so far, line by line."""

    nonce: bytes
    t0: float
    init_at: float | None = None
    start_at: float | None = None
    status: int | None = None
    setup_failed: str | None = None
    hints: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)

    def feed(self, raw: bytes) -> None:
        line = raw.decode(errors="replace")
        self.tail = [*self.tail[-14:], line]
        if any(h in line for h in _HINTS) and len(self.hints) < 5:
            self.hints.append(line.strip())
        words = raw.split()
        if len(words) < 3 or words[0] != MARK or words[1] != self.nonce:
            return
        elapsed = time.monotonic() - self.t0
        if words[2] == b"init":
            self.init_at = elapsed
            log(f"vm: the guest's init runs, {elapsed:.1f}s after qemu started")
        elif words[2] == b"start":
            self.start_at = elapsed
            log(f"vm: command started {elapsed:.1f}s after qemu started")
        elif words[2] == b"exit" and len(words) > 3:
            self.status = int(words[3])
            log(f"vm: command exited {self.status} after {elapsed:.1f}s")
        elif words[2] == b"setup-failed":
            self.setup_failed = line.split("setup-failed", 1)[1].strip()

    @property
    def done(self) -> bool:
        return self.status is not None or self.setup_failed is not None


def command_script(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """The script guest_init.sh runs: ``env`` exported, then ``argv`` exec'ed."""
    bad = [k for k in env if not k.isidentifier()]
    if bad:
        raise ClusterError(f"not an environment variable name: {', '.join(bad)}")
    lines = ["#!/bin/sh"] + [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    return "\n".join([*lines, f"exec {shlex.join(argv)}", ""])


def qemu_command(image: Image, *, memory: int, nonce: str, script: Path, share: Path | None,
                 verbose_boot: bool = False) -> list[str]:
    """The qemu command line for one run."""
    def path(p: Path) -> str:
        return str(p).replace(",", ",,")  # qemu's option syntax doubles commas in values

    append = ["console=ttyS0,115200", "root=/dev/vda", "rootfstype=ext4", "ro", f"init={GUEST_INIT}",
              "panic=-1", "cgroup_no_v1=all,named", "fsck.mode=skip", f"pytest_chaos.nonce={nonce}"]
    if not verbose_boot:
        append.append("quiet")
    if share is not None:
        append.append(f"pytest_chaos.share={SHARE_TAG}")
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-smp", "1", "-m", str(memory),
           "-nodefaults", "-no-user-config", "-nic", "none", "-display", "none", "-no-reboot",
           "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", " ".join(append),
           "-drive", f"file={path(image.disk)},format=raw,if=virtio,snapshot=on",
           "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
           "-device", "virtio-rng-pci",
           "-fw_cfg", f"name=opt/pytest-chaos/command,file={path(script)}"]
    if share is not None:
        cmd += ["-virtfs", f"local,path={path(share)},mount_tag={SHARE_TAG},security_model=none,id=share"]
    return cmd


def _die_with_parent() -> None:
    """In qemu before exec: SIGKILL when the process that started it ends (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _remove_stale_tmp() -> None:
    """Remove the temporary directories (qemu's overlay) of runs whose process was SIGKILLed."""
    for d in Path(tempfile.gettempdir()).glob("pytest-chaos-vm-*-*"):
        pid = d.name.split("-")[3]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


def _log_file(log_dir: Path) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in sorted(log_dir.glob("run-*.log"), key=lambda p: p.stat().st_mtime)[:-_KEEP_LOGS]:
        old.unlink(missing_ok=True)
    return log_dir / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def run(image: Image, argv: Sequence[str], *, share: Path | None = None, timeout: float = 1500,
        boot_timeout: float = 300, memory: int = 2048, env: Mapping[str, str] | None = None,
        log_dir: Path | None = None, out: BinaryIO | None = None, verbose_boot: bool = False) -> int:
    """Boot ``image``, run ``argv`` as root in the guest, power off; returns the command's exit status.

    ``share`` (a host directory) is mounted read-write at GUEST_SHARE, and is the command's working
    directory (else /root). The console streams to ``out`` (default: stdout) and to a log file in
    ``log_dir`` (default: the state dir's logs/vm). Raises VMError when the guest does not reach its
    init within ``boot_timeout`` seconds, the whole run exceeds ``timeout``, or the guest fails
    before the command ends (kernel panic, setup failure).
    """
    if not argv:
        raise ClusterError("no command to run in the VM")
    if share is not None and not share.is_dir():
        raise ClusterError(f"--share {share}: not a directory")
    require_tools({"qemu-system-x86_64": "apt-get install qemu-system-x86"})
    logfile = _log_file(log_dir or settings.Layout().logs / "vm")
    nonce = secrets.token_hex(8)
    out = out or sys.stdout.buffer
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    _remove_stale_tmp()
    tmp = Path(tempfile.mkdtemp(prefix=f"pytest-chaos-vm-{os.getpid()}-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        script = tmp / "command.sh"
        script.write_text(command_script(argv, env or {}))
        cmd = qemu_command(image, memory=memory, nonce=nonce, script=script,
                           share=share.resolve() if share else None, verbose_boot=verbose_boot)
        log(f"vm: booting {image.dir.name} (kernel {image.info.get('kernel')}, TCG, 1 vCPU, {memory} MiB, "
            f"share {share or 'none'}); console log: {logfile}")
        with logfile.open("wb") as lf:
            lf.write(f"$ {shlex.join(cmd)}\n".encode())
            lf.flush()
            console = _Console(nonce.encode(), time.monotonic())
            # qemu's own TMPDIR: its snapshot overlay stays in tmp, which goes whatever happens.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_die_with_parent,
                                    env={**os.environ, "TMPDIR": str(tmp)})
            _stream(proc, console, lf, out, timeout, boot_timeout, logfile)
        return _outcome(proc, console, logfile)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        if on_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _stream(proc: subprocess.Popen[bytes], console: _Console, lf: BinaryIO, out: BinaryIO,
            timeout: float, boot_timeout: float, logfile: Path) -> None:
    """Copy the console to ``out`` and the log until qemu exits; kill it when a deadline passes."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = b""
    done_at: float | None = None
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if done_at is not None:
                limit, why = done_at + 30, None  # it powers off; give it 30 s, then kill it
            elif console.init_at is None:
                limit = console.t0 + min(timeout, boot_timeout)
                why = f"the guest did not reach its init within {min(timeout, boot_timeout):.0f}s of boot"
            else:
                limit, why = console.t0 + timeout, f"the guest did not finish within {timeout:.0f}s (the timeout)"
            if now >= limit:
                proc.kill()
                proc.wait()
                if why is None:
                    return
                raise VMError(f"{why}; qemu was killed{_hints(console)}", logfile)
            if not sel.select(limit - now):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                proc.wait()
                log(f"vm: qemu exited {proc.returncode}, {time.monotonic() - console.t0:.1f}s after it started")
                return
            chunk = chunk.replace(b"\r", b"")
            out.write(chunk)
            out.flush()
            lf.write(chunk)
            lf.flush()
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                console.feed(line)
            if console.done and done_at is None:
                done_at = time.monotonic()


def _hints(console: _Console) -> str:
    return "".join(f"\n  guest: {h}" for h in console.hints)


def _outcome(proc: subprocess.Popen[bytes], console: _Console, logfile: Path) -> int:
    if console.status is not None:
        return console.status
    if console.setup_failed is not None:
        raise VMError(f"the guest's init failed before the command: {console.setup_failed}", logfile)
    tail = "".join(f"\n  | {line}" for line in console.tail[-10:])
    panic = next((h for h in console.hints if "Kernel panic" in h), None)
    if panic:
        raise VMError(f"the guest's kernel panicked{' before its init' if console.init_at is None else ''}: "
                      f"{panic}\nlast console lines:{tail}", logfile)
    if console.init_at is None:
        raise VMError(f"qemu exited (status {proc.returncode}) before the guest reached its init"
                      f"{_hints(console)}\nlast console lines:{tail}", logfile)
    raise VMError(f"the guest stopped (qemu status {proc.returncode}) without reporting the command's "
                  f"exit status{_hints(console)}\nlast console lines:{tail}", logfile)
