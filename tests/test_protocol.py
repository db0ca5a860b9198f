"""The committed gRPC stubs are what the .proto files generate, and load on the pinned runtime floors."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import sys

from tests.support.targets import require

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_committed_stubs_match_the_proto_files():
    require(importlib.util.find_spec("grpc_tools") is not None, "grpcio-tools (the dev extra)")
    result = subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_runtime_floors_match_the_generator():
    stub = (ROOT / "daemon/pytest_chaos_daemon/api/v1/chaos_daemon_pb2.py").read_text()
    grpc_stub = (ROOT / "daemon/pytest_chaos_daemon/api/v1/chaos_daemon_pb2_grpc.py").read_text()
    protobuf_version = re.search(r"# Protobuf Python Version: (\S+)", stub).group(1)
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", grpc_stub).group(1)
    pyproject = (ROOT / "pyproject.toml").read_text()
    major = protobuf_version.split(".")[0]
    assert f'"protobuf>={protobuf_version},<{int(major) + 1}"' in pyproject
    assert f'"grpcio>={grpc_version}"' in pyproject
