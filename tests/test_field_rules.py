"""The field rules declared in the protos (shop.api.v1.rules): what they
refuse, that no violation echoes a value, that the services and the gateway
enforce them, and that /openapi.json carries every one of them (a rule added
to a proto shows up there with no other change)."""

import uuid

import grpc
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from gateway.auth import Gatekeeper
from gateway.openapi import openapi_document
from gateway.transcoding import RequestError, build_request, route_table
from gateway.upstreams import SERVICES
from plumbing.errors import from_rpc_error
from plumbing.field_rules import declared_forms, declared_rules, format_rule, violations_of
from shop.api.v1 import field_rules_pb2
from shop.inventory.v1 import inventory_pb2 as inventory_pb
from shop.inventory.v1 import inventory_pb2_grpc
from shop.order.v1 import order_pb2 as order_pb
from shop.payment.v1 import payment_pb2 as payment_pb
from tests import harness
from tests.test_gateway_support import Backends, gateway_config

# What each kind of rule refuses


@pytest.mark.parametrize(
    "request_message, fields",
    [
        (order_pb.GetOrderRequest(), ["order_id"]),
        (order_pb.GetOrderRequest(order_id="o 1"), ["order_id"]),
        (order_pb.GetOrderRequest(order_id="o1\n"), ["order_id"]),
        (order_pb.GetOrderRequest(order_id="o" * 65), ["order_id"]),
        (order_pb.GetOrderRequest(order_id="o" * 64), []),
        (inventory_pb.GetProductRequest(product_id="check"), ["product_id"]),
        (inventory_pb.GetProductRequest(product_id="checks"), []),
        (order_pb.ListOrdersRequest(), []),
        (order_pb.ListOrdersRequest(customer_id="C 1", page_size=201), ["customer_id", "page_size"]),
        (order_pb.ListOrdersRequest(page_size=-1), ["page_size"]),
        (inventory_pb.AdjustStockRequest(product_id="P1", delta=0), ["delta"]),
        (inventory_pb.AdjustStockRequest(product_id="P1", delta=-(10**9) - 1), ["delta"]),
        (inventory_pb.AdjustStockRequest(product_id="P1", delta=-(10**9), reason="r" * 201), ["reason"]),
        (inventory_pb.UpsertProductRequest(product_id="P1"), []),
        (inventory_pb.UpsertProductRequest(product_id="P1", name=" \t"), ["name"]),
        (inventory_pb.UpsertProductRequest(product_id="P1", name="n" * 201), ["name"]),
        (inventory_pb.UpsertProductRequest(product_id="P1", currency=""), ["currency"]),
        (
            inventory_pb.UpsertProductRequest(product_id="P1", available=-1, price_cents=10**8 + 1),
            ["price_cents", "available"],
        ),
        (inventory_pb.ReserveRequest(order_id="o1"), ["items"]),
        (payment_pb.CreatePaymentMethodRequest(), ["card"]),
    ],
)
def test_declared_rules_refuse_what_they_say(request_message, fields):
    assert [field for field, _ in violations_of(request_message)] == fields


def test_items_are_counted_and_each_one_checked():
    items = [order_pb.Item(product_id="P1", quantity=1)] * 50
    assert violations_of(order_pb.CreateOrderRequest(customer_id="C1", items=items)) == []
    too_many = [*items, order_pb.Item(product_id="check", quantity=0)]
    assert violations_of(order_pb.CreateOrderRequest(customer_id="C1", items=too_many)) == [
        ("items", "at most 50 items")
    ]
    bad = [order_pb.Item(product_id="", quantity=1001), order_pb.Item(product_id="P1", quantity=1)]
    assert violations_of(order_pb.CreateOrderRequest(items=bad)) == [
        ("items[0].product_id", "is required"),
        ("items[0].quantity", "must be between 1 and 1000"),
    ]


ITEM = order_pb.Item(product_id="P1", quantity=1)


@pytest.mark.parametrize(
    "fields, violations",
    [
        (dict(items=[ITEM]), []),
        (dict(product_id="P1", quantity=2), []),
        # Zero values are no form: an empty list, "", 0.
        (dict(items=[], product_id="P1", quantity=2, payment_method=""), []),
        (dict(items=[ITEM], quantity=0), []),
        (dict(), [("items", "give items or product_id and quantity")]),
        (dict(product_id="P1"), [("quantity", "is required with product_id")]),
        (dict(quantity=3), [("product_id", "is required with quantity")]),
        (
            dict(items=[ITEM], product_id="P1"),
            [("items", "give either items or product_id and quantity, not both")],
        ),
    ],
)
def test_an_order_gives_its_items_in_exactly_one_form(fields, violations):
    assert violations_of(order_pb.CreateOrderRequest(customer_id="C1", **fields)) == violations


def test_the_flat_form_is_checked_only_when_given():
    flat = order_pb.CreateOrderRequest(customer_id="C1", product_id="P/1", quantity=1001)
    assert [f for f, _ in violations_of(flat)] == ["product_id", "quantity"]


@pytest.mark.parametrize(
    "value", ["4242424242424242", "4242 4242 4242 4242", "EUR\n", "tok_4242424242424242\n", "pm_4242424242424242"]
)
def test_no_violation_echoes_the_value(value):
    request = payment_pb.ChargeRequest(
        order_id=value, currency=value, payment_method=value, customer_id=value
    )
    violations = violations_of(request)
    assert {"currency", "payment_method"} <= {field for field, _ in violations}
    assert all(value.strip() not in description for _, description in violations)


def _message_with_enum_rule():
    """A message of this test alone, with an enum field declared defined_only."""
    package = f"shop.test{uuid.uuid4().hex[:8]}.v1"
    file_proto = descriptor_pb2.FileDescriptorProto(
        name=f"{package.replace('.', '/')}/shade.proto", package=package, syntax="proto3"
    )
    file_proto.dependency.append("shop/api/v1/field_rules.proto")
    shade = file_proto.enum_type.add(name="Shade")
    for number, name in enumerate(["SHADE_UNSPECIFIED", "LIGHT", "DARK"]):
        shade.value.add(name=name, number=number)
    paint = file_proto.message_type.add(name="PaintRequest")
    field = paint.field.add(
        name="shade",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
        type_name=f".{package}.Shade",
    )
    field.options.Extensions[field_rules_pb2.rules].defined_only = True
    pool = descriptor_pool.Default()
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.PaintRequest"))


def test_an_enum_declared_defined_only_takes_only_its_named_values():
    paint = _message_with_enum_rule()
    assert violations_of(paint(shade=1)) == []
    assert violations_of(paint(shade=0)) == [("shade", "must be one of LIGHT, DARK")]
    assert violations_of(paint(shade=7)) == [("shade", "must be one of LIGHT, DARK")]


# Enforced by the services (in the interceptor, before the servicer) and by the gateway


def test_a_service_refuses_a_broken_rule_before_its_servicer_runs(sqlite_url):
    inventory = harness.run_inventory(sqlite_url("inventory"))
    try:
        stub = inventory_pb2_grpc.InventoryServiceStub(inventory.channel())
        with pytest.raises(grpc.RpcError) as info:
            stub.Reserve(inventory_pb.ReserveRequest(order_id="o 1"), timeout=10)
        error = from_rpc_error(info.value)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        assert error.violations == [
            ("order_id", "must match ^[A-Za-z0-9_-]{1,64}$"),
            ("items", "at least one item is required"),
        ]
        # Nothing was reserved: the same order id reserves normally afterwards.
        items = [inventory_pb.Item(product_id="P001", quantity=1)]
        assert stub.Reserve(inventory_pb.ReserveRequest(order_id="o1", items=items), timeout=10).items
    finally:
        inventory.stop()


def test_the_gateway_refuses_a_broken_rule_without_calling_anything():
    routes = {(b.verb, b.template): b for b in route_table(SERVICES)}
    with pytest.raises(RequestError) as info:
        build_request(routes[("GET", "/orders")], {}, [("page_size", "500")], None)
    assert info.value.violations == [("page_size", "must be between 0 and 200")]


# Published: /openapi.json carries every declared rule


def _document(bindings):
    config = gateway_config(Backends("127.0.0.1:1", "127.0.0.1:1", "127.0.0.1:1"))
    return openapi_document(bindings, (), Gatekeeper(config))


def _flat(schema: dict, components: dict) -> dict:
    """A schema's keywords with its $ref, allOf and anyOf branches merged in."""
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    merged = dict(schema)
    for branch in schema.get("allOf", []) + schema.get("anyOf", []):
        merged.update(_flat(branch, components))
    return merged


def _assert_carries(field, schema: dict, required_here: bool, components: dict, seen: list) -> None:
    """`schema` (the field's, where the document puts it) says every rule the field declares."""
    rules = declared_rules(field)
    flat = _flat(schema, components)
    if rules is not None:
        seen.append(field.full_name)
        value = _flat(flat["items"], components) if field.is_repeated else flat
        if rules.format:
            fmt = format_rule(rules.format)
            assert value["pattern"] == fmt.pattern, field.full_name
            assert set(fmt.not_in) <= set(value.get("not", {}).get("enum", [])), field.full_name
        if rules.HasField("max_length"):
            assert value["maxLength"] == rules.max_length, field.full_name
        if rules.HasField("min"):
            assert value["minimum"] == rules.min, field.full_name
        if rules.HasField("max"):
            assert value["maximum"] == rules.max, field.full_name
        if rules.HasField("min_items"):
            assert flat["minItems"] == rules.min_items, field.full_name
        if rules.HasField("max_items"):
            assert flat["maxItems"] == rules.max_items, field.full_name
        if rules.defined_only:
            assert value["enum"] == [v.name for v in field.enum_type.values if v.number], field.full_name
        if rules.required:
            assert required_here, field.full_name
    if field.type == field.TYPE_MESSAGE and field.message_type.full_name in components:
        nested = components[field.message_type.full_name]
        _assert_message_carries(field.message_type, nested, components, seen)


def _assert_message_carries(descriptor, schema: dict, components: dict, seen: list, leave_out=()) -> None:
    forms = declared_forms(descriptor)
    if forms:
        seen.append(f"{descriptor.full_name}:forms")
        assert [branch["required"] for branch in schema["oneOf"]] == [list(form) for form in forms]
    for field in descriptor.fields:
        if field.name not in leave_out:
            required = field.name in schema.get("required", [])
            _assert_carries(field, schema["properties"][field.name], required, components, seen)


def _assert_document_carries_every_rule(bindings) -> list[str]:
    document = _document(bindings)
    components = document["components"]["schemas"]
    seen: list[str] = []
    for binding in bindings:
        operation = document["paths"][binding.template][binding.verb.lower()]
        # The request's fields (the headers every route reads are $refs).
        parameters = {p["name"]: p for p in operation.get("parameters", []) if "$ref" not in p}
        request = binding.method.input_type
        path_fields = {v.field_path for v in binding.variables}
        for name in path_fields:
            _assert_carries(request.fields_by_name[name], parameters[name]["schema"], True, components, seen)
        if binding.body == "*":
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            _assert_message_carries(request, body, components, seen, leave_out=path_fields)
        else:
            for field in request.fields:
                if field.name in parameters and field.name not in path_fields:
                    parameter = parameters[field.name]
                    _assert_carries(field, parameter["schema"], parameter["required"], components, seen)
    return seen


def test_openapi_carries_every_rule_the_protos_declare():
    seen = _assert_document_carries_every_rule(route_table(SERVICES))
    declared_on_public_requests = {
        field.full_name
        for binding in route_table(SERVICES)
        for message in (binding.method.input_type, *_nested(binding.method.input_type))
        for field in message.fields
        if declared_rules(field) is not None
    } | {
        f"{message.full_name}:forms"
        for binding in route_table(SERVICES)
        for message in (binding.method.input_type, *_nested(binding.method.input_type))
        if declared_forms(message)
    }
    assert set(seen) == declared_on_public_requests
    assert {
        "shop.order.v1.Item.quantity",
        "shop.payment.v1.ListPaymentsRequest.order_id",
        "shop.order.v1.CreateOrderRequest:forms",
    } <= set(seen)


def _nested(descriptor):
    for field in descriptor.fields:
        if field.type == field.TYPE_MESSAGE and field.message_type.file.package.startswith("shop."):
            yield field.message_type
            yield from _nested(field.message_type)


def test_a_rule_added_to_a_proto_is_published_and_enforced_with_no_other_change():
    package = f"shop.test{uuid.uuid4().hex[:8]}.v1"
    file_proto = descriptor_pb2.FileDescriptorProto(
        name=f"{package.replace('.', '/')}/crate.proto", package=package, syntax="proto3"
    )
    file_proto.dependency.extend(["google/api/annotations.proto", "shop/api/v1/field_rules.proto"])
    string, int32 = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    )
    crate = file_proto.message_type.add(name="PackCrateRequest")
    crate_id = crate.field.add(name="crate_id", number=1, type=string)
    crate_id.options.Extensions[field_rules_pb2.rules].required = True
    crate_id.options.Extensions[field_rules_pb2.rules].format = field_rules_pb2.ID
    weight = crate.field.add(name="weight", number=2, type=int32)
    weight.options.Extensions[field_rules_pb2.rules].min = 1
    weight.options.Extensions[field_rules_pb2.rules].max = 30
    label = crate.field.add(
        name="labels", number=3, type=string, label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    )
    label.options.Extensions[field_rules_pb2.rules].max_items = 3
    label.options.Extensions[field_rules_pb2.rules].max_length = 10
    service = file_proto.service.add(name="CrateService")
    method = service.method.add(
        name="PackCrate",
        input_type=f".{package}.PackCrateRequest",
        output_type=f".{package}.PackCrateRequest",
    )
    rule = method.options.Extensions[annotations_pb2.http]
    rule.post = "/crates/{crate_id}"
    rule.body = "*"
    pool = descriptor_pool.Default()
    pool.Add(file_proto)
    bindings = route_table({"crates": pool.FindServiceByName(f"{package}.CrateService")})

    seen = _assert_document_carries_every_rule(bindings)
    assert sorted(seen) == [f"{package}.PackCrateRequest.{name}" for name in ("crate_id", "labels", "weight")]
    body = b'{"weight": 31, "labels": ["a", "much too long", "c", "d"]}'
    with pytest.raises(RequestError) as info:
        build_request(bindings[0], {"crate_id": "c 1"}, [], body)
    assert [f for f, _ in info.value.violations] == ["crate_id", "weight", "labels", "labels[1]"]
