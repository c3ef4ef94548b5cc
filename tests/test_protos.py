"""The committed generated code matches protos/, every public RPC has its
HTTP binding, and every RPC its entry in the caller table."""

import filecmp
import pathlib

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from plumbing import access
from scripts.gen_protos import generate
from shop.api.v1 import http_options_pb2
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


def callers_table_faults(file_descriptor) -> list[str]:
    """What is wrong with the caller table in one .proto: an RPC without an
    entry, an unknown caller, a public route the gateway may not call, a
    saga step anyone but the order service may call."""
    from google.api import annotations_pb2

    faults = []
    for service in file_descriptor.services_by_name.values():
        for method in service.methods:
            callers = set(method.GetOptions().Extensions[http_options_pb2.callers].allow)
            if not callers:
                faults.append(f"{method.full_name}: no (shop.api.v1.callers) entry")
            elif not callers <= set(access.IDENTITIES):
                faults.append(f"{method.full_name}: unknown callers {sorted(callers - set(access.IDENTITIES))}")
            elif method.GetOptions().HasExtension(annotations_pb2.http):
                if "gateway" not in callers:
                    faults.append(f"{method.full_name}: a public route the gateway may not call")
            elif callers != {"order"}:
                faults.append(f"{method.full_name}: a saga step callable by {sorted(callers)}")
    return faults


@pytest.mark.parametrize("module", [inventory_pb2, payment_pb2, order_pb2])
def test_every_rpc_has_an_entry_in_the_caller_table(module):
    assert callers_table_faults(module.DESCRIPTOR) == []


def test_a_new_rpc_without_an_entry_fails_the_table_check():
    pool = descriptor_pool.DescriptorPool()
    proto = descriptor_pb2.FileDescriptorProto(name="shop/new/v1/new.proto", package="shop.new.v1", syntax="proto3")
    proto.message_type.add(name="Empty")
    service = proto.service.add(name="NewService")
    service.method.add(name="Unlisted", input_type=".shop.new.v1.Empty", output_type=".shop.new.v1.Empty")
    pool.Add(proto)
    new_file = pool.FindFileByName("shop/new/v1/new.proto")
    assert callers_table_faults(new_file) == ["shop.new.v1.NewService.Unlisted: no (shop.api.v1.callers) entry"]
    # ... and the servers admit no one to it.
    assert access.callers_of("/shop.new.v1.NewService/Unlisted") == frozenset()
