"""Regenerate the Python stubs from the .proto files in this directory.

The .proto files are the source of truth; the generated modules are committed
under daemon/pytest_chaos_daemon/ so that installing the package needs no
protobuf compiler. Run after editing a .proto:

    python proto/generate.py          # rewrite the committed stubs
    python proto/generate.py --check  # exit 1 if the committed stubs are stale

Needs the `dev` extra (grpcio-tools, pinned so the output is reproducible).
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import sys
import tempfile

PROTO_ROOT = pathlib.Path(__file__).resolve().parent
OUTPUT_ROOT = PROTO_ROOT.parent / "daemon"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


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
            committed = OUTPUT_ROOT / rel
            if not committed.exists():
                problems.append(f"missing: {committed}")
            elif not filecmp.cmp(committed, fresh_root / rel, shallow=False):
                problems.append(f"differs: {committed}")
        return problems


def main(argv: list[str] | None = None) -> int:
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
    generate(OUTPUT_ROOT)
    for rel in sorted(generated_files(OUTPUT_ROOT)):
        print(f"wrote {OUTPUT_ROOT / rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
