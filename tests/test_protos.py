"""The committed generated code matches protos/, and every public RPC has
its HTTP binding."""

import filecmp
import pathlib

import pytest

from scripts.gen_protos import generate
from shop.inventory.v1 import inventory_pb2
from shop.order.v1 import order_pb2
from shop.payment.v1 import payment_pb2

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Saga steps: called by the order service only, never over HTTP.
INTERNAL_RPCS = {"Reserve", "Release", "Charge", "Void", "Refund"}


def test_generated_code_is_current(tmp_path):
    generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "shop").rglob("*.py*") if "__pycache__" not in p.parts)
    assert fresh == committed, "run `make gen`: generated files differ from protos/"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert not stale, f"run `make gen`: stale generated code {stale}"


@pytest.mark.parametrize("module", [inventory_pb2, payment_pb2, order_pb2])
def test_every_public_rpc_has_an_http_annotation(module):
    from google.api import annotations_pb2

    for service in module.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            has_rule = method.GetOptions().HasExtension(annotations_pb2.http)
            assert has_rule == (method.name not in INTERNAL_RPCS), method.full_name
