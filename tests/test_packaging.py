"""The two distributions: what each wheel holds and needs, and what installing and uninstalling them leaves.

The wheels are built here from the working tree (``pip wheel``, no network: the build needs only setuptools,
already installed); the daemon's wheel compiles the confine helper, so the test needs gcc, as setup.sh
installs it.
"""

from __future__ import annotations

import ast
import email.parser
import os
import pathlib
import platform
import subprocess
import sys
import zipfile

import pytest_chaos
from pytest_chaos.api.version import VERSION
from tests.support.wheels import fresh_venv

ROOT = pathlib.Path(pytest_chaos.__file__).resolve().parent.parent
PLUGIN_PACKAGE = ROOT / "pytest_chaos"


def imported_modules(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    return found


def wheel_files(wheel: pathlib.Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {name for name in z.namelist() if ".dist-info/" not in name}


def wheel_metadata(wheel: pathlib.Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(meta).decode())


def requirements(wheel: pathlib.Path) -> dict[str, list[str]]:
    """Requirement names by extra ("" for the base), lower-cased."""
    by_extra: dict[str, list[str]] = {}
    for req in wheel_metadata(wheel).get_all("Requires-Dist") or []:
        spec, _, marker = req.partition(";")
        extra = marker.split("extra ==")[1].strip().strip("'\"") if "extra ==" in marker else ""
        name = spec.strip().split(" ")[0].split(">")[0].split("=")[0].split("<")[0].split("[")[0].lower()
        by_extra.setdefault(extra, []).append(name)
    return by_extra


def test_the_plugins_wheel_holds_the_plugin_and_the_api_and_nothing_of_the_daemon(wheels):
    files = wheel_files(wheels["pytest_chaos"])
    assert {"pytest_chaos/plugin.py", "pytest_chaos/api/contract.py", "pytest_chaos/api/v1/chaos_daemon_pb2.py",
            "pytest_chaos/api/v1/chaos_daemon_pb2_grpc.py"} <= files
    assert not [f for f in files if f.startswith("pytest_chaos_daemon") or f.endswith((".c", ".so"))]
    assert wheels["pytest_chaos"].name.endswith("-py3-none-any.whl")  # pure: no compiler to install it


def test_the_daemons_wheel_holds_the_server_and_the_built_helper_not_its_source(wheels):
    wheel = wheels["pytest_chaos_daemon"]
    files = wheel_files(wheel)
    assert {"pytest_chaos_daemon/server/servicer.py", "pytest_chaos_daemon/api/v1/chaos_daemon_pb2.py",
            "pytest_chaos_daemon/native/pytest-chaos-confine"} <= files
    assert not [f for f in files if f.startswith("pytest_chaos/") or f.endswith(".c")]
    assert "-py3-none-linux_" in wheel.name  # it carries a native program
    helpers = ["pytest-chaos-confine"]
    if platform.machine() == "x86_64":  # the time fault's helper patches x86_64 vDSOs only
        helpers.append("pytest-chaos-timeshift")
    with zipfile.ZipFile(wheel) as z:
        for name in helpers:
            helper = z.read(f"pytest_chaos_daemon/native/{name}")
            mode = z.getinfo(f"pytest_chaos_daemon/native/{name}").external_attr >> 16
            assert helper[:4] == b"\x7fELF" and mode & 0o111, name


def test_the_distributions_dependencies(wheels):
    plugin, daemon = requirements(wheels["pytest_chaos"]), requirements(wheels["pytest_chaos_daemon"])
    assert {"pytest", "protobuf", "grpcio", "pyyaml"} <= set(plugin[""])
    assert not {"cryptography", "grpcio-reflection", "google-re2", "h11", "pytest-chaos-daemon"} & set(plugin[""])
    assert plugin["local"] == ["pytest-chaos-daemon"] and plugin["kubernetes"] == ["kubernetes"]
    # The image installs the daemon alone: no test framework, no YAML.
    assert {"protobuf", "grpcio", "cryptography", "google-re2", "h11"} <= set(daemon[""])
    assert not {"pytest", "pyyaml", "pytest-chaos"} & set(daemon[""])
    # Both release together: the local extra asks for this very daemon.
    local = next(r for r in wheel_metadata(wheels["pytest_chaos"]).get_all("Requires-Dist") if "extra == \"local\"" in r)
    assert f"=={VERSION}" in local
    assert wheel_metadata(wheels["pytest_chaos"])["Version"] == wheel_metadata(wheels["pytest_chaos_daemon"])["Version"]


def test_installing_and_uninstalling_both_wheels_leaves_nothing(wheels, tmp_path):
    env = tmp_path / "venv"
    python = fresh_venv(env, system_site_packages=True)
    # The outer pip installs into the venv (--python): no network, no dependencies (the venv sees the system's).
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", "-q"]
    site = pathlib.Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                       check=True, capture_output=True, text=True).stdout.strip())
    before = set(os.listdir(site)) | set(os.listdir(env / "bin"))
    subprocess.run([*pip, "install", "--no-deps", *map(str, wheels.values())], check=True, timeout=120)
    started = subprocess.run([env / "bin" / "pytest-chaos-daemon", "--version"], capture_output=True, text=True,
                             timeout=60)
    assert started.returncode == 0 and VERSION in started.stdout, started.stderr
    helper = subprocess.run([python, "-c", "from pytest_chaos_daemon.confinement import confine; print(confine.helper_path())"],
                            check=True, capture_output=True, text=True, timeout=60, cwd=tmp_path).stdout.strip()
    assert helper == str(site / "pytest_chaos_daemon" / "native" / "pytest-chaos-confine")
    subprocess.run([*pip, "uninstall", "-y", "pytest-chaos", "pytest-chaos-daemon"], check=True, timeout=120)
    after = set(os.listdir(site)) | set(os.listdir(env / "bin"))
    assert after == before


def test_the_plugin_imports_nothing_of_the_daemon():
    crossing = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in PLUGIN_PACKAGE.rglob("*.py")
        for module in imported_modules(path)
        if module.startswith("pytest_chaos_daemon")
    }
    assert not crossing
    # The check sees imports at all: the plugin does import modules by name.
    assert "grpc" in imported_modules(PLUGIN_PACKAGE / "transport.py")


def test_the_daemon_imports_nothing_of_the_plugin_but_through_its_api_link():
    daemon = ROOT / "daemon" / "pytest_chaos_daemon"
    assert (daemon / "api").is_symlink() and (daemon / "api").resolve() == (PLUGIN_PACKAGE / "api").resolve()
    crossing = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in daemon.rglob("*.py")
        if "api" not in path.relative_to(daemon).parts[:1]
        for module in imported_modules(path)
        if module.split(".")[0] in ("pytest_chaos", "pytest", "_pytest", "yaml")
    }
    assert not crossing


def test_the_test_cluster_tool_is_not_part_of_either_distribution():
    import tomllib

    for project_dir in (ROOT, ROOT / "daemon"):
        project = tomllib.loads((project_dir / "pyproject.toml").read_text())
        assert "pytest-chaos-cluster" not in project["project"]["scripts"]
        assert all("cluster" not in p for p in project["tool"]["setuptools"]["packages"]["find"]["include"])
    assert not (ROOT / "pytest_chaos_cluster").exists()
    cluster = tomllib.loads((ROOT / "cluster" / "pyproject.toml").read_text())
    assert cluster["project"]["scripts"]["pytest-chaos-cluster"] == "pytest_chaos_cluster.cli:main"
