"""Regenerate the Python stubs from the .proto files in this directory.

The .proto files are the source of truth; the generated modules are committed
(the plugin's API under pytest_chaos/api/, the container runtimes' under
daemon/pytest_chaos_daemon/runtime_api/) so that installing needs no protobuf
compiler. The daemon's package holds the API as a link to the plugin's (one
source, two distributions), so a stub imports its siblings relatively. Run after
editing a .proto:

    python proto/generate.py          # rewrite the committed stubs
    python proto/generate.py --check  # exit 1 if the committed stubs are stale

The generator is pinned (GENERATOR), and old on purpose: its output runs on
every runtime from the floors in pyproject.toml (protobuf 4.25.1, grpcio 1.62.0)
to the newest; a newer generator's stubs refuse older runtimes. It needs a
protobuf older than the one the project's environment may hold, so the script
runs itself in a venv of its own (made once, under ~/.cache/pytest-chaos/, from
PyPI) unless it already runs with that generator.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import venv

GENERATOR_VERSION = "1.62.3"  # grpcio-tools; writes protobuf 4.25.1 gencode, gRPC stubs with no version check
GENERATOR = f"grpcio-tools=={GENERATOR_VERSION}"
PROTO_ROOT = pathlib.Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
# An absolute import of a sibling stub, as protoc writes it: made relative so the API package imports
# the same as pytest_chaos.api (the plugin) and as pytest_chaos_daemon.api (the daemon's link to it).
SIBLING_IMPORT = re.compile(r"^from pytest_chaos\.api\.v1 import (\w+_pb2) as", re.MULTILINE)


def destination(rel: pathlib.Path) -> pathlib.Path:
    """Where a generated file is committed: the daemon's own protos under daemon/, the shared API beside the plugin."""
    return REPO_ROOT / "daemon" / rel if rel.parts[0] == "pytest_chaos_daemon" else REPO_ROOT / rel


def proto_files() -> list[pathlib.Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: pathlib.Path) -> None:
    from grpc_tools import protoc  # imported late: only the dev extra has it

    include = pathlib.Path(protoc.__file__).parent / "_proto"
    for proto in proto_files():
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(proto.relative_to(PROTO_ROOT)),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")
    for stub in out_dir.rglob("*_pb2*.py*"):
        stub.write_text(SIBLING_IMPORT.sub(r"from . import \1 as", stub.read_text()))


def generated_files(root: pathlib.Path) -> set[pathlib.Path]:
    found = set()
    for proto in proto_files():
        stem = proto.relative_to(PROTO_ROOT).with_suffix("")
        for suffix in GENERATED_SUFFIXES:
            path = root / f"{stem}{suffix}"
            if path.exists():
                found.add(path.relative_to(root))
    return found


def stale_files() -> list[str]:
    """Names of committed stubs that differ from, or are missing from, a fresh run."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = pathlib.Path(tmp)
        generate(fresh_root)
        problems = []
        for rel in sorted(generated_files(fresh_root)):
            committed = destination(rel)
            if not committed.exists():
                problems.append(f"missing: {committed}")
            elif not filecmp.cmp(committed, fresh_root / rel, shallow=False):
                problems.append(f"differs: {committed}")
        return problems


def _generator_python() -> pathlib.Path:
    """A python with GENERATOR installed: a venv of its own, made once."""
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
    env = cache / "pytest-chaos" / f"proto-generator-{GENERATOR_VERSION}"
    python = env / "bin" / "python"
    if not python.exists():
        print(f"generate.py: making a venv with {GENERATOR} in {env} (once) ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(env)
        subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", GENERATOR], check=True)
    return python


def _runs_the_generator() -> bool:
    try:
        return importlib.metadata.version("grpcio-tools") == GENERATOR_VERSION
    except importlib.metadata.PackageNotFoundError:
        return False


def main(argv: list[str] | None = None) -> int:
    if not _runs_the_generator():
        args = sys.argv[1:] if argv is None else argv
        return subprocess.run([_generator_python(), __file__, *args]).returncode
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale_files()
        for line in problems:
            print(line)
        if problems:
            print("stubs are stale: run `python proto/generate.py`", file=sys.stderr)
            return 1
        print("stubs match the .proto files")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = pathlib.Path(tmp)
        generate(fresh_root)
        for rel in sorted(generated_files(fresh_root)):
            shutil.copyfile(fresh_root / rel, destination(rel))
            print(f"wrote {destination(rel)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
