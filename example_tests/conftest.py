"""The example suite has a part per backend: local/ runs with the default local
backend, kubernetes/ with ``--chaos-backend=kubernetes`` against a cluster.
Only the part for the backend in use is collected."""

from __future__ import annotations

import pathlib

HERE = pathlib.Path(__file__).parent


def pytest_ignore_collect(collection_path: pathlib.Path, config) -> bool | None:
    backend = config.getoption("chaos_backend") or config.getini("chaos_backend") or "local"
    for part in ("local", "kubernetes"):
        if collection_path == HERE / part and part != backend:
            return True
    return None
