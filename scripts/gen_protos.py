"""Generate the Python code for protos/ with grpcio-tools.

Usage: python scripts/gen_protos.py [OUT_DIR]   (default: the repository root)

The generated modules land at their package path (shop/order/v1/order_pb2.py
for shop.order.v1), so they import without sys.path tricks. They are committed;
tests/test_protos.py regenerates into a temporary directory and fails when the
committed copy is stale.
"""

import pathlib
import sys

import grpc_tools
from google.api import annotations_pb2
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))


def protoc_args(outputs: list[str]) -> list[str]:
    """protoc's arguments for every proto in protos/, writing `outputs`."""
    googleapis = pathlib.Path(annotations_pb2.__file__).resolve().parents[2]
    well_known = pathlib.Path(grpc_tools.__file__).resolve().parent / "_proto"
    return ["grpc_tools.protoc", f"-I{PROTOS}", f"-I{googleapis}", f"-I{well_known}", *outputs, *proto_files()]


def generate(out_dir: pathlib.Path) -> None:
    out = str(out_dir)
    args = protoc_args([f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"])
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
