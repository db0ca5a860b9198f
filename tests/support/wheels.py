"""The project's two wheels, built from the working tree, and fresh venvs to install them in."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import venv

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROJECTS = ((ROOT, "pytest_chaos"), (ROOT / "daemon", "pytest_chaos_daemon"))


def build_wheels(out: pathlib.Path, scratch: pathlib.Path) -> dict[str, pathlib.Path]:
    """Both wheels in ``out``, by package name. The daemon's compiles the confine helper (gcc here)."""
    for project, package in PROJECTS:
        # From a copy of the project's files: setuptools reuses a build/ beside the sources, whatever it holds.
        copy = scratch / package
        copy.mkdir(parents=True)
        for name in ("pyproject.toml", "setup.py", "README.md"):
            if (project / name).exists():
                shutil.copy(project / name, copy / name)
        shutil.copytree(project / package, copy / package,
                        ignore=shutil.ignore_patterns("__pycache__", "pytest-chaos-confine*", "pytest-chaos-timeshift*"))
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                                "--no-build-isolation", "-w", str(out), str(copy)],
                               capture_output=True, text=True, timeout=300)
        assert built.returncode == 0, built.stderr
    found = {w.name.split("-")[0]: w for w in out.glob("*.whl")}
    assert set(found) == {"pytest_chaos", "pytest_chaos_daemon"}, found
    return found


def fresh_venv(path: pathlib.Path, system_site_packages: bool = False) -> pathlib.Path:
    """A new venv at ``path``; returns its python."""
    venv.EnvBuilder(with_pip=not system_site_packages, system_site_packages=system_site_packages).create(path)
    return path / "bin" / "python"
