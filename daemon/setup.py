"""Builds the daemon's native programs into the wheel: the confine helper (pytest_chaos_daemon/native/confine.c)
and the time fault's helper (native/timeshift.c, x86_64 only).

Each is a static Linux program, so the wheel is tagged for this platform (py3-none-linux_*), and
the C sources stay out of it. Everything else about the distribution is in pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import platform
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1 has it in the wheel package
    from wheel.bdist_wheel import bdist_wheel  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent


def _confine_module():
    # Loaded by path: the package's dependencies are not installed while the wheel builds.
    spec = importlib.util.spec_from_file_location("_confine", HERE / "pytest_chaos_daemon" / "confinement" / "confine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithHelper(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # a source checkout builds it with `python3 -m pytest_chaos_daemon.confinement.confine`
        confine = _confine_module()
        native = Path(self.build_lib) / "pytest_chaos_daemon" / "native"
        helpers = [(confine.SOURCE, confine.NAME)]
        if platform.machine() in ("x86_64", "AMD64"):  # the time fault patches x86_64 vDSOs only
            helpers.append((confine.SOURCE.parent / "timeshift.c", "pytest-chaos-timeshift"))
        for source, name in helpers:
            try:
                confine.build_helper(native / name, source, name)
            except confine.HelperUnavailable as err:
                sys.exit(f"pytest-chaos-daemon: cannot build the wheel: {err}")
        for source in ("confine.c", "timeshift.c"):
            (native / source).unlink(missing_ok=True)


class NativeDistribution(Distribution):
    def has_ext_modules(self) -> bool:
        return True  # it carries a native program: platlib, and a platform wheel


class PlatformWheel(bdist_wheel):
    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(distclass=NativeDistribution, cmdclass={"build_py": BuildWithHelper, "bdist_wheel": PlatformWheel})
