"""The plugin's boundary: from the daemon's package it imports only the API (stubs and contract)."""

from __future__ import annotations

import ast
import pathlib

import pytest_chaos

ALLOWED = ("pytest_chaos_daemon.api.v1", "pytest_chaos_daemon.api.contract")


def imported_modules(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    return found


def test_the_plugin_imports_nothing_of_the_daemon_but_its_api():
    package = pathlib.Path(pytest_chaos.__file__).parent
    crossing = {
        f"{path.relative_to(package.parent)}: {module}"
        for path in package.rglob("*.py")
        for module in imported_modules(path)
        if module.startswith("pytest_chaos_daemon") and not module.startswith(ALLOWED)
    }
    assert not crossing
    # The check sees imports at all: the plugin does use the API.
    assert any(m.startswith(ALLOWED) for m in imported_modules(package / "transport.py"))


def test_the_test_cluster_tool_is_not_part_of_the_plugins_distribution():
    import tomllib

    root = pathlib.Path(pytest_chaos.__file__).parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert "pytest-chaos-cluster" not in project["project"]["scripts"]
    assert all("cluster" not in pattern for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"])
    assert not (root / "pytest_chaos_cluster").exists()
    cluster = tomllib.loads((root / "cluster" / "pyproject.toml").read_text())
    assert cluster["project"]["scripts"]["pytest-chaos-cluster"] == "pytest_chaos_cluster.cli:main"
