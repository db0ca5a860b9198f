"""The committed gRPC stubs are what the .proto files generate, and the declared floors are the generator's."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "proto"))
import generate  # noqa: E402  (proto/generate.py: the pinned generator)


def test_committed_stubs_match_the_proto_files():
    # generate.py runs itself with the pinned generator, in a venv it makes once from PyPI.
    result = subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--check"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def declared(project_dir: pathlib.Path) -> dict[str, str]:
    """Each base dependency's floor (the version after >=), by name."""
    deps = tomllib.loads((project_dir / "pyproject.toml").read_text())["project"]["dependencies"]
    return {m.group(1).lower(): m.group(2) for d in deps if (m := re.match(r"([\w.-]+)>=([\d.]+)", d))}


def test_runtime_floors_are_the_generators():
    """The stubs run on the runtime they were generated for and newer: the floors say exactly that version."""
    stub = (ROOT / "pytest_chaos/api/v1/chaos_daemon_pb2.py").read_text()
    gencode = re.search(r"# Protobuf Python Version: (\S+)", stub).group(1)
    major, minor = generate.GENERATOR_VERSION.split(".")[:2]
    for project_dir in (ROOT, ROOT / "daemon"):
        floors = declared(project_dir)
        assert floors["protobuf"] == gencode
        assert floors["grpcio"] == floors["grpcio-health-checking"] == f"{major}.{minor}.0"
    assert declared(ROOT / "daemon")["grpcio-reflection"] == f"{major}.{minor}.0"
    # A stub of a newer generator checks the runtime's version at import and refuses an older one: not these.
    assert "ValidateProtobufRuntimeVersion" not in stub
    assert "GRPC_GENERATED_VERSION" not in (ROOT / "pytest_chaos/api/v1/chaos_daemon_pb2_grpc.py").read_text()
