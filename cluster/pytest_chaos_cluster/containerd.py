"""Configure containerd (Debian's 1.6) for the CRI and make sure it runs.

Two modes (``up --containerd=system|dedicated``):

``system`` (default): the machine's containerd at ``/run/containerd/containerd.sock``,
the socket the project's daemon (and ``daemon/deploy``) uses. Its config
``/etc/containerd/config.toml`` is replaced by one that keeps Debian's settings
and adds what the kubelet needs here: cgroupfs (``SystemdCgroup = false``), the
locally built sandbox image, the CNI dirs of containernetworking-plugins, and
``restrict_oom_score_adj = true`` (this machine has no CAP_SYS_RESOURCE, so runc
cannot give the pod sandbox the oom_score_adj -998 the CRI asks for; it fails
with "can't get final child's PID from pipe"). The original file is kept once
as ``config.toml.pytest-chaos.orig``. A running containerd whose effective config
(``containerd config dump``) already suits is left alone; otherwise containerd
is (re)started: via systemd if systemd runs it, else as our own process (PID
file ``<state>/run/containerd.pid``). ``down`` stops containerd only if no
containerd ran before ``up``.

``dedicated``: a second containerd of our own with its own socket
(``/run/pytest-chaos-cluster/containerd.sock``), root and state dirs, for
machines where the system containerd must not be touched. The daemon's
DaemonSet then needs that socket's host path: ``up`` writes a kustomize overlay
for it (see cluster.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import settings
from .procs import ManagedProcess
from .util import ClusterError, log, run

MARKER = "# Written by pytest-chaos-cluster"
CRI = "io.containerd.grpc.v1.cri"
CAP_SYS_RESOURCE = 24


@dataclass(frozen=True)
class Containerd:
    """Where one containerd instance keeps its socket, config, root and state."""

    mode: str
    socket: str
    config: Path
    root: Path
    state: Path

    @classmethod
    def for_mode(cls, mode: str, layout: settings.Layout) -> Containerd:
        if mode == "system":
            return cls("system", settings.CONTAINERD_SOCKET, settings.CONTAINERD_CONFIG,
                       Path("/var/lib/containerd"), Path("/run/containerd"))
        if mode == "dedicated":
            run_dir = Path("/run/pytest-chaos-cluster")
            return cls("dedicated", str(run_dir / "containerd.sock"), layout.config / "containerd.toml",
                       layout.state / "containerd", run_dir / "containerd")
        raise ValueError(f"unknown containerd mode {mode!r}")

    def ctr(self, *args: str, namespace: str | None = None) -> list[str]:
        """A ``ctr`` command line for this instance."""
        ns = ["-n", namespace] if namespace else []
        return ["ctr", "--address", self.socket, *ns, *args]

    def process(self, layout: settings.Layout) -> ManagedProcess:
        return ManagedProcess("containerd", shutil.which("containerd") or "/usr/bin/containerd",
                              layout.run, layout.logs)

    def config_text(self, sandbox_image: str = settings.PAUSE_IMAGE) -> str:
        """The config file (version 2 schema, containerd 1.6)."""
        cri = f'plugins."{CRI}"'
        head = (f"{MARKER} (python -m pytest_chaos_cluster up); the original is\n"
                "# kept as config.toml.pytest-chaos.orig. Re-running `up` rewrites this file.\n"
                if self.mode == "system" else f"{MARKER}: its dedicated containerd.\n")
        where = ""
        if self.mode == "dedicated":
            where = (f'root = "{self.root}"\nstate = "{self.state}"\n\n'
                     f'[grpc]\n  address = "{self.socket}"\n\n'
                     f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n\n')
        return f"""{head}version = 2
{where}
[plugins]
  [{cri}]
    sandbox_image = "{sandbox_image}"
    # No CAP_SYS_RESOURCE here: never ask runc for an oom_score_adj below containerd's own.
    restrict_oom_score_adj = true
    [{cri}.containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [{cri}.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [{cri}.containerd.runtimes.runc.options]
          SystemdCgroup = false
    [{cri}.cni]
      bin_dir = "{settings.CNI_BIN_DIR}"
      conf_dir = "{settings.CNI_CONF_DIR}"
  [plugins."io.containerd.internal.v1.opt"]
    path = "{self.root / 'opt' if self.mode == 'dedicated' else '/var/lib/containerd/opt'}"
"""

    def write_config(self) -> bool:
        """Write the config; returns True if the file changed."""
        text = self.config_text()
        path = self.config
        if path.is_file() and path.read_text() == text:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        orig = path.with_name(path.name + ".pytest-chaos.orig")
        if self.mode == "system" and path.is_file() and MARKER not in path.read_text() and not orig.exists():
            shutil.copy2(path, orig)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return True

    def responsive(self) -> bool:
        if not stat.S_ISSOCK(_stat_mode(self.socket)):
            return False
        return run(self.ctr("version"), check=False, timeout=10).returncode == 0

    def cri_loaded(self) -> bool:
        """True if the CRI plugin loaded (``ctr plugins ls`` says ok)."""
        proc = run(self.ctr("plugins", "ls"), check=False, timeout=10)
        return any(line.split()[:2] == ["io.containerd.grpc.v1", "cri"] and line.rstrip().endswith("ok")
                   for line in proc.stdout.splitlines() if line.strip())

    def serving_pids(self, ours: ManagedProcess) -> list[int]:
        """PIDs of containerd daemons serving this instance's socket (ours first)."""
        pids = [p for p in [ours.pid()] if p]
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in pids:
                continue
            try:
                exe = os.readlink(f"/proc/{entry}/exe")
            except OSError:
                continue
            if os.path.basename(exe.removesuffix(" (deleted)")) != "containerd":
                continue
            if _address_of(int(entry)) == self.socket:
                pids.append(int(entry))
        return pids


def _stat_mode(path: str) -> int:
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _address_of(pid: int) -> str:
    """The gRPC socket a running containerd serves (from its effective config)."""
    argv = _cmdline(pid)
    for i, arg in enumerate(argv):
        if arg in ("--address", "-a") and i + 1 < len(argv):
            return argv[i + 1]
    cfg = effective_config(_config_path_of(pid))
    return str(cfg.get("grpc", {}).get("address", settings.CONTAINERD_SOCKET))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _config_path_of(pid: int) -> Path:
    """The config file a running containerd was started with."""
    argv = _cmdline(pid)
    found = None
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith("--config="):
            found = arg.split("=", 1)[1]
    if found is None:
        return settings.CONTAINERD_CONFIG
    if not os.path.isabs(found):
        try:
            found = os.path.join(os.readlink(f"/proc/{pid}/cwd"), found)
        except OSError:
            pass
    return Path(found)


def effective_config(path: Path) -> dict[str, Any]:
    """``containerd config dump`` of ``path``: the file merged with built-in defaults."""
    proc = run(["containerd", "--config", str(path), "config", "dump"], check=False, timeout=30)
    if proc.returncode != 0:
        return {}
    try:
        return tomllib.loads(proc.stdout)
    except tomllib.TOMLDecodeError:
        return {}


def have_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def incompatibilities(cfg: dict[str, Any]) -> list[str]:
    """Why a containerd config does not suit the kubelet here (empty list: it does)."""
    if not cfg:
        return ["config could not be read"]
    problems = []
    disabled = cfg.get("disabled_plugins", [])
    if "cri" in disabled or CRI in disabled:
        problems.append("the CRI plugin is disabled")
    cri = cfg.get("plugins", {}).get(CRI, {})
    ctd = cri.get("containerd", {})
    runtime_name = ctd.get("default_runtime_name", "runc")
    runtime = ctd.get("runtimes", {}).get(runtime_name, {})
    if runtime.get("runtime_type") != "io.containerd.runc.v2":
        problems.append(f"default runtime {runtime_name!r} is not io.containerd.runc.v2")
    if runtime.get("options", {}).get("SystemdCgroup", False):
        problems.append("SystemdCgroup = true (the kubelet here uses cgroupfs)")
    cni = cri.get("cni", {})
    if cni.get("bin_dir") != settings.CNI_BIN_DIR:
        problems.append(f"cni bin_dir is {cni.get('bin_dir')!r}, not {settings.CNI_BIN_DIR}")
    if cni.get("conf_dir") != str(settings.CNI_CONF_DIR):
        problems.append(f"cni conf_dir is {cni.get('conf_dir')!r}, not {settings.CNI_CONF_DIR}")
    if not cri.get("sandbox_image"):
        problems.append("no sandbox_image")
    if not cri.get("restrict_oom_score_adj", False) and not have_cap_sys_resource():
        problems.append("restrict_oom_score_adj = false, but this machine lacks CAP_SYS_RESOURCE "
                        "(pod sandboxes would fail to start)")
    return problems


def _systemd_managed() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def ensure_running(inst: Containerd, layout: settings.Layout, allow_restart: bool) -> str:
    """Make sure a CRI-capable containerd serves ``inst.socket``; returns its sandbox image.

    Records in ``<state>/run/containerd.json`` whether a containerd already ran,
    so that ``down`` leaves a pre-existing one running.
    """
    proc = inst.process(layout)
    record = layout.run / "containerd.json"
    running = inst.serving_pids(proc)
    if not record.exists():
        layout.run.mkdir(parents=True, exist_ok=True)
        preexisting = bool(running) and not proc.running()
        record.write_text(json.dumps({"mode": inst.mode, "preexisting": preexisting}))
    if running:
        cfg_path = _config_path_of(running[0])
        cfg = effective_config(cfg_path)
        problems = incompatibilities(cfg)
        if not problems and cfg_path == inst.config and _read(cfg_path) != inst.config_text() \
                and MARKER in _read(cfg_path):
            problems = ["its config was written by an older pytest-chaos-cluster"]
        if not problems and inst.responsive():
            image = cfg["plugins"][CRI]["sandbox_image"]
            who = "ours" if proc.pid() else "not started by this tool"
            log(f"containerd: running (pid {running[0]}, {who}) with a suitable CRI config "
                f"({cfg_path}; sandbox image {image})")
            _check_cri(inst, proc)
            return image
        log(f"containerd: the running one (pid {running[0]}, config {cfg_path}) does not suit the "
            f"kubelet: {'; '.join(problems)}")
        if not proc.pid() and not allow_restart:
            raise ClusterError(
                f"containerd (pid {running[0]}) was not started by this tool and needs a restart with "
                f"another config ({'; '.join(problems)}). Rerun without --no-restart-containerd to "
                "let `up` rewrite the config and restart it (running containers survive a containerd "
                "restart), or use --containerd=dedicated.")
    if inst.write_config():
        log(f"containerd: wrote {inst.config}")
    if inst.mode == "system" and _systemd_managed():
        log("containerd: (re)starting via systemctl")
        run(["systemctl", "restart", "containerd"], timeout=120)
    else:
        foreign = [p for p in running if p != proc.pid()]
        if foreign:
            log(f"containerd: stopping containerd pid {foreign} to restart it with {inst.config}")
            for pid in foreign:
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in foreign):
                time.sleep(0.2)
        if proc.running():
            log("containerd: restarting ours with the new config")
            proc.stop(30)
        Path(inst.socket).parent.mkdir(parents=True, exist_ok=True)
        log(f"containerd: starting (log: {proc.logfile})")
        proc.start(["--config", str(inst.config)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if inst.responsive():
            break
        if proc.exited_early():
            raise ClusterError(f"containerd exited; see {proc.logfile}:\n{proc.log_tail()}")
        time.sleep(0.3)
    else:
        raise ClusterError(f"containerd did not answer on {inst.socket} in 60s (log: {proc.logfile})")
    _check_cri(inst, proc)
    return settings.PAUSE_IMAGE


def _check_cri(inst: Containerd, proc: ManagedProcess) -> None:
    if not inst.cri_loaded():
        raise ClusterError("containerd runs but its CRI plugin did not load "
                           f"(`ctr --address {inst.socket} plugins ls`; log: {proc.logfile})")


def stop_if_ours(inst: Containerd, layout: settings.Layout) -> None:
    """Stop containerd if `up` started it and none ran before."""
    record = layout.run / "containerd.json"
    try:
        preexisting = json.loads(record.read_text()).get("preexisting", False)
    except (OSError, ValueError):
        preexisting = False
    proc = inst.process(layout)
    if preexisting and proc.running():
        log("containerd: left running (a containerd ran before `up`)")
        proc.pidfile.unlink(missing_ok=True)
    elif proc.stop(30):
        log("containerd: stopped")
    if inst.mode == "dedicated" and not inst.serving_pids(proc):
        # Sockets and the runtime state dir; the root (images) stays for the next `up`.
        shutil.rmtree(Path(inst.socket).parent, ignore_errors=True)
    record.unlink(missing_ok=True)


def pod_containers(inst: Containerd, pod_uids: set[str] | None,
                   namespace: str = "k8s.io") -> list[str]:
    """IDs of containers in ``namespace`` that belong to the given pods.

    ``pod_uids=None`` means every container (a dedicated containerd is all ours).
    Otherwise a container counts if its ``io.kubernetes.pod.uid`` label is one
    of ``pod_uids``, or if it is a pod container with no running task: pods
    deleted before ``down`` are no longer known by UID, and their dead
    containers serve nobody. Running CRI pods made by others are left alone.
    """
    if not inst.responsive():
        return []
    ids = run(inst.ctr("containers", "ls", "-q", namespace=namespace), check=False).stdout.split()
    if pod_uids is None:
        return ids
    tasks = run(inst.ctr("tasks", "ls", namespace=namespace), check=False).stdout.splitlines()[1:]
    running = {line.split()[0] for line in tasks if line.split()[2:3] == ["RUNNING"]}
    mine = []
    for cid in ids:
        info = run(inst.ctr("containers", "info", cid, namespace=namespace), check=False).stdout
        try:
            labels = json.loads(info).get("Labels") or {}
        except ValueError:
            continue
        uid = labels.get("io.kubernetes.pod.uid")
        if uid in pod_uids or (uid and cid not in running):
            mine.append(cid)
    return mine


def remove_containers(inst: Containerd, ids: list[str], namespace: str = "k8s.io") -> None:
    """Kill the tasks of and delete the given containers (images stay)."""
    for cid in ids:
        run(inst.ctr("tasks", "kill", "-s", "SIGKILL", cid, namespace=namespace), check=False, timeout=30)
    for cid in ids:
        run(inst.ctr("tasks", "delete", "--force", cid, namespace=namespace), check=False, timeout=30)
        run(inst.ctr("containers", "delete", cid, namespace=namespace), check=False, timeout=30)
