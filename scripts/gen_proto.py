"""Regenerate (or, with --check, verify) the protobuf code of grpc_messenger.

    python scripts/gen_proto.py          # rewrite src/grpc_messenger/proto/*_pb2*
    python scripts/gen_proto.py --check  # exit 1 if the committed code is stale

Needs the `dev` extra (grpcio-tools, mypy-protobuf). The output is a pure
function of the .proto and the pinned tool versions, so CI can compare it.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PROTO = Path("grpc_messenger/proto/messenger.proto")
OUTPUTS = ("messenger_pb2.py", "messenger_pb2.pyi", "messenger_pb2_grpc.py", "messenger_pb2_grpc.pyi")


def generate(out_dir: Path) -> None:
    """Run protoc with the Python, gRPC and mypy stub plugins into out_dir."""
    bin_dir = Path(sys.executable).parent  # mypy-protobuf's plugins live beside python
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{SRC}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        str(SRC / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        produced = Path(tmp) / PROTO.parent
        committed = SRC / PROTO.parent
        stale = [
            name
            for name in OUTPUTS
            if not (committed / name).exists() or not filecmp.cmp(produced / name, committed / name, shallow=False)
        ]
        if check:
            if stale:
                print(f"stale generated code: {', '.join(stale)}; run: python scripts/gen_proto.py", file=sys.stderr)
                return 1
            print("generated protobuf code is up to date")
            return 0
        for name in OUTPUTS:
            shutil.copyfile(produced / name, committed / name)
        print(f"regenerated {', '.join(OUTPUTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
