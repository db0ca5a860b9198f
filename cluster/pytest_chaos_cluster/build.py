"""Build the cluster's binaries from the Go module proxy and cache them by version.

``k8s.io/kubernetes`` cannot be ``go install``-ed: its go.mod replaces every
staging module with a local path (``k8s.io/api => ./staging/src/k8s.io/api``).
So a throw-away *wrapper module* is generated that requires
``k8s.io/kubernetes vX.Y.Z`` and replaces each staging module with its published
twin ``k8s.io/<name> v0.Y.Z``; all seven binaries are then built by ONE
``go build -o DIR pkg...`` invocation, so shared packages compile once (that
matters on a 2-core machine). etcd is built the same way from
``go.etcd.io/etcd/server/v3`` (its go.mod replaces sibling modules with ``../x``).

Results land in ``<cache>/k8s-<version>/bin`` and ``<cache>/etcd-<version>/bin``
with a ``.complete`` marker; a cached version is reused without running Go.
The small ``pause`` binary for the sandbox image, and ``runc-bounded-caps``
(native/), are built here too.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .settings import Layout
from .util import ClusterError, log, require_tools

K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl",
                "kubeadm", "kube-proxy")  # the last two for the kind node image

_LOCAL_REPLACE = re.compile(r"^\s*(?:replace\s+)?(\S+)\s*=>\s*(\.\.?/\S+)\s*$", re.M)
_GO_DIRECTIVE = re.compile(r"^go\s+(\S+)\s*$", re.M)
_GODEBUG = re.compile(r"^godebug\s+.*$", re.M)

PAUSE_SOURCE = """\
// pause: the sandbox process of every pod. Sleeps until SIGTERM/SIGINT and
// reaps any zombie re-parented to it (it is PID 1 of the pod's pid namespace).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
"""


def go_env() -> dict[str, str]:
    """Environment for every ``go`` invocation: static, module mode, trimmed."""
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    flags = env.get("GOFLAGS", "").split()
    flags = [f for f in flags if not f.startswith("-mod=")] + ["-mod=mod"]
    if not any(f.startswith("-buildvcs") for f in flags):
        flags.append("-buildvcs=false")
    env["GOFLAGS"] = " ".join(flags)
    return env


def _is_complete(bindir: Path, names: tuple[str, ...]) -> bool:
    return (bindir / ".complete").is_file() and all((bindir / n).is_file() for n in names)


def module_gomod(module: str, version: str, env: dict[str, str]) -> str:
    """Text of ``module@version``'s go.mod, fetched through the configured GOPROXY."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["go", "mod", "download", "-json", f"{module}@{version}"],
            cwd=tmp, env=env, check=False, capture_output=True, text=True,
        )
    if out.returncode != 0:
        raise ClusterError(f"go mod download {module}@{version} failed:\n{out.stdout}{out.stderr}")
    info = json.loads(out.stdout)
    return Path(info["GoMod"]).read_text()


def write_wrapper(srcdir: Path, name: str, module: str, version: str, gomod: str,
                  replace_version: dict[str, str]) -> list[str]:
    """Write a wrapper go.mod requiring ``module@version``.

    Every local-path replace of the upstream go.mod becomes a replace by the
    published module at ``replace_version[...]`` (or ``version``). Returns the
    replaced module paths.
    """
    replaced = sorted({m for m, target in _LOCAL_REPLACE.findall(gomod) if "FORBIDDEN" not in target})
    go_dir = _GO_DIRECTIVE.search(gomod)
    lines = [f"module pytest-chaos.local/{name}", "", f"go {go_dir.group(1) if go_dir else '1.24.0'}", ""]
    lines += _GODEBUG.findall(gomod)
    lines += ["", f"require {module} {version}", "", "replace ("]
    for mod in replaced:
        lines.append(f"\t{mod} => {mod} {replace_version.get(mod, version)}")
    lines += [")", ""]
    srcdir.mkdir(parents=True, exist_ok=True)
    (srcdir / "go.mod").write_text("\n".join(lines))
    return replaced


class _Progress:
    """Prints elapsed time and compiled-package count while ``go build -v`` runs."""

    def __init__(self, label: str, total: int, logfile: Path) -> None:
        self.label, self.total, self.logfile = label, total, logfile
        self.count, self.last, self.start = 0, "", time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)

    def feed(self, line: str) -> None:
        line = line.strip()
        if line and not line.startswith(("go:", "#")) and " " not in line:
            self.count += 1
            self.last = line

    def _line(self) -> str:
        el = int(time.monotonic() - self.start)
        total = f"/~{self.total}" if self.total else ""
        return (f"  [{self.label}] {el // 60:02d}:{el % 60:02d} elapsed, "
                f"{self.count}{total} packages compiled; last: {self.last or '(resolving modules)'}")

    def _tick(self) -> None:
        interval = 2.0 if sys.stderr.isatty() else 20.0
        while not self._stop.wait(interval):
            if sys.stderr.isatty():
                sys.stderr.write("\r\033[K" + self._line()[:150])
            else:
                sys.stderr.write(self._line() + "\n")
            sys.stderr.flush()

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
        sys.stderr.write(self._line() + "\n")


def _run_logged(cmd: list[str], cwd: Path, env: dict[str, str], logfile: Path,
                progress: _Progress | None = None) -> None:
    with logfile.open("a") as lf:
        lf.write(f"\n$ {' '.join(cmd)}\n")
        lf.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            lf.write(line)
            if progress:
                progress.feed(line)
        rc = proc.wait()
    if rc != 0:
        tail = logfile.read_text().splitlines()[-30:]
        raise ClusterError(f"{cmd[0]} {cmd[1]} failed (exit {rc}); log: {logfile}\n" + "\n".join(tail))


def _count_deps(srcdir: Path, packages: list[str], env: dict[str, str], logfile: Path) -> int:
    """Resolve modules (downloading them) and count packages to compile."""
    with logfile.open("a") as lf:
        lf.write(f"\n$ go list -deps {' '.join(packages)}\n")
        out = subprocess.run(["go", "list", "-deps", *packages], cwd=srcdir, env=env,
                             capture_output=True, text=True, check=False)
        lf.write(out.stderr)
    if out.returncode != 0:
        raise ClusterError(f"resolving {' '.join(packages)} failed; log: {logfile}\n{out.stderr[-3000:]}")
    return len(out.stdout.split())


def _go_build(label: str, workdir: Path, packages: list[str], out: Path, ldflags: str,
              env: dict[str, str], logfile: Path) -> None:
    t0 = time.monotonic()
    log(f"{label}: resolving and downloading modules (go list -deps) ...")
    total = _count_deps(workdir, packages, env, logfile)
    log(f"{label}: modules ready after {time.monotonic() - t0:.0f}s; compiling ~{total} packages "
        f"for {', '.join(p.rsplit('/', 1)[-1] for p in packages)} in one go build (log: {logfile})")
    cmd = ["go", "build", "-v", "-trimpath", "-ldflags", ldflags, "-o", str(out), *packages]
    with _Progress(label, total, logfile) as prog:
        _run_logged(cmd, workdir, env, logfile, prog)
    log(f"{label}: built in {time.monotonic() - t0:.0f}s")


GO_REQUIREMENT = {"go": "Go >= 1.24 (https://go.dev/dl; Debian 12's golang is too old)"}


def build_kubernetes(layout: Layout, force: bool = False) -> Path:
    """Build (or reuse) kube-apiserver, controller-manager, scheduler, kubelet and kubectl."""
    version = layout.k8s_version
    m = re.fullmatch(r"v1\.(\d+)\.(\d+)", version)
    if not m:
        raise ClusterError(f"unsupported Kubernetes version {version!r} (want v1.MINOR.PATCH)")
    minor, patch = m.groups()
    # k8s.io/kubernetes replaces its staging modules with local paths; the
    # published staging modules carry version v0.MINOR.PATCH.
    staging_version = f"v0.{minor}.{patch}"
    date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    xs = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        xs += [f"-X {pkg}.gitVersion={version}", f"-X {pkg}.gitMajor=1",
               f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean",
               f"-X {pkg}.buildDate={date}"]
    return _build_from_proxy(
        f"kubernetes {version}", layout.k8s_bin, force, "k8s", "k8s.io/kubernetes", version,
        staging_versions=lambda gomod: {
            mod: staging_version for mod, _ in _LOCAL_REPLACE.findall(gomod) if mod.startswith("k8s.io/")
        },
        packages=[f"k8s.io/kubernetes/cmd/{c}" for c in K8S_COMMANDS],
        commands=K8S_COMMANDS,
        ldflags=" ".join(["-s", "-w", *xs]),
    )


def build_etcd(layout: Layout, force: bool = False) -> Path:
    """Build (or reuse) etcd from go.etcd.io/etcd/server/v3."""
    return _build_from_proxy(
        f"etcd {layout.etcd_version}", layout.etcd_bin, force, "etcd", "go.etcd.io/etcd/server/v3",
        layout.etcd_version, staging_versions=lambda gomod: {},
        packages=["go.etcd.io/etcd/server/v3"], commands=("etcd",), ldflags="-s -w",
    )


def _build_from_proxy(
    label: str,
    bindir: Path,
    force: bool,
    wrapper_name: str,
    module: str,
    version: str,
    staging_versions: Callable[[str], dict[str, str]],
    packages: list[str],
    commands: tuple[str, ...],
    ldflags: str,
) -> Path:
    """Build ``packages`` of ``module@version`` from the module proxy through a wrapper module.

    The binaries land in ``bindir`` (named ``commands``), cached: a complete
    ``bindir`` is reused unless ``force``.
    """
    if not force and _is_complete(bindir, commands):
        log(f"{label}: cached in {bindir}")
        return bindir
    require_tools(GO_REQUIREMENT)
    env = go_env()
    top = bindir.parent
    src, tmp_bin = top / "src", top / "bin.tmp"
    top.mkdir(parents=True, exist_ok=True)
    logfile = top / "build.log"
    logfile.write_text(f"build of {label} started {_dt.datetime.now().isoformat()}\n")
    t0 = time.monotonic()
    log(f"{label}: fetching go.mod from the module proxy")
    gomod = module_gomod(module, version, env)
    if src.exists():
        shutil.rmtree(src)
    write_wrapper(src, wrapper_name, module, version, gomod, staging_versions(gomod))
    (src / "tools.go").write_text(
        "//go:build tools\n\npackage tools\n\nimport (\n" + "".join(f'\t_ "{p}"\n' for p in packages) + ")\n")
    if tmp_bin.exists():
        shutil.rmtree(tmp_bin)
    tmp_bin.mkdir(parents=True)
    # One package builds to a named file; several build into the directory.
    out = tmp_bin / commands[0] if len(packages) == 1 else tmp_bin
    _go_build(label, src, packages, out, ldflags, env, logfile)
    _finish(tmp_bin, bindir, {"version": version, "seconds": round(time.monotonic() - t0)})
    return bindir


def _build_single_file(out: Path, name: str, source: bytes) -> Path:
    """Build one stdlib-only Go ``source`` file into the static binary ``out`` (once)."""
    if out.is_file():
        return out
    require_tools(GO_REQUIREMENT)
    src = out.parent / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(f"module pytest-chaos.local/{name}\n\ngo 1.22\n")
    (src / "main.go").write_bytes(source)
    subprocess.run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out) + ".tmp", "."],
                   cwd=src, env=go_env(), check=True)
    os.replace(str(out) + ".tmp", out)
    return out


def build_pause(layout: Layout) -> Path:
    """Build the static ``pause`` binary used as the pod sandbox image's entrypoint."""
    return _build_single_file(layout.cache / "pause" / "pause", "pause", PAUSE_SOURCE.encode())


BOUNDED_RUNC_SOURCE = Path(__file__).with_name("native") / "runc_bounded_caps.go"


def build_bounded_runc(layout: Layout) -> Path:
    """Build the static ``runc-bounded-caps`` (native/runc_bounded_caps.go), cached by its source's digest."""
    source = BOUNDED_RUNC_SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
    return _build_single_file(layout.cache / "runc-bounded-caps" / digest / "runc-bounded-caps",
                              "runc-bounded-caps", source)


def _finish(tmp_bin: Path, bindir: Path, info: dict[str, object]) -> None:
    (tmp_bin / ".complete").write_text(json.dumps(info) + "\n")
    if bindir.exists():
        shutil.rmtree(bindir)
    tmp_bin.rename(bindir)
