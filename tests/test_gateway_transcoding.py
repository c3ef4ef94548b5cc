"""The route table and JSON <-> protobuf conversion, from the descriptors
alone (no servers)."""

import uuid

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool

from gateway.transcoding import (
    RequestError,
    build_request,
    location_for,
    message_to_json,
    route_table,
)
from gateway.upstreams import SERVICES
from shop.api.v1 import http_options_pb2
from shop.inventory.v1 import inventory_pb2 as inventory_pb
from shop.order.v1 import order_pb2 as order_pb
from shop.payment.v1 import payment_pb2 as payment_pb


@pytest.fixture(scope="module")
def routes():
    return {(b.verb, b.template): b for b in route_table(SERVICES)}


def test_route_table_has_every_public_route_of_the_contract(routes):
    assert set(routes) == {
        ("POST", "/orders"),
        ("GET", "/orders"),
        ("GET", "/orders/{order_id}"),
        ("DELETE", "/orders/{order_id}"),
        ("GET", "/inventory"),
        ("GET", "/inventory/{product_id}"),
        ("POST", "/inventory/check"),
        ("PUT", "/inventory/{product_id}"),
        ("POST", "/inventory/{product_id}/adjustments"),
        ("POST", "/payment_methods"),
        ("GET", "/payment_methods/{payment_method_id}"),
        ("GET", "/payments"),
        ("GET", "/payments/{payment_id}"),
    }


def test_saga_steps_have_no_route(routes):
    methods = {b.method.name for b in routes.values()}
    assert not methods & {"Reserve", "Release", "Charge", "Void", "Refund"}


def test_custom_option_marks_created_admin_and_refused_fields(routes):
    create = routes[("POST", "/orders")]
    assert create.success_status == 201
    assert create.options.location == "/orders/{id}"
    assert "card" in create.refused_fields
    assert "/payment_methods" in create.refused_fields["card"]
    assert routes[("POST", "/payment_methods")].success_status == 201
    assert routes[("PUT", "/inventory/{product_id}")].options.admin
    assert routes[("POST", "/inventory/{product_id}/adjustments")].options.admin
    assert not routes[("GET", "/inventory/{product_id}")].options.admin


def _annotated_service():
    """A service that exists only in this test, annotated like the shop's."""
    package = f"shop.test{uuid.uuid4().hex[:8]}.v1"
    file_proto = descriptor_pb2.FileDescriptorProto(
        name=f"{package.replace('.', '/')}/shelf.proto", package=package, syntax="proto3"
    )
    file_proto.dependency.extend(["google/api/annotations.proto", "shop/api/v1/http_options.proto"])
    string, int32, int64, message = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
        descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
        descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
    )
    shelf = file_proto.message_type.add(name="Shelf")
    shelf.field.add(name="shelf_id", number=1, type=string)
    shelf.field.add(name="books", number=2, type=int64)
    move = file_proto.message_type.add(name="MoveShelfRequest")
    move.field.add(name="shelf_id", number=1, type=string)
    move.field.add(name="floor", number=2, type=int32)
    update = file_proto.message_type.add(name="UpdateShelfRequest")
    update.field.add(name="shelf_id", number=1, type=string)
    update.field.add(name="shelf", number=2, type=message, type_name=f".{package}.Shelf")
    update.field.add(name="dry_run_level", number=3, type=int32)
    service = file_proto.service.add(name="ShelfService")
    move_method = service.method.add(
        name="MoveShelf", input_type=f".{package}.MoveShelfRequest", output_type=f".{package}.Shelf"
    )
    rule = move_method.options.Extensions[annotations_pb2.http]
    rule.post = "/shelves/{shelf_id}/moves"
    rule.body = "*"
    move_method.options.Extensions[http_options_pb2.http].created = True
    move_method.options.Extensions[http_options_pb2.http].location = "/shelves/{shelf_id}"
    update_method = service.method.add(
        name="UpdateShelf", input_type=f".{package}.UpdateShelfRequest", output_type=f".{package}.Shelf"
    )
    rule = update_method.options.Extensions[annotations_pb2.http]
    rule.patch = "/shelves/{shelf_id}"
    rule.body = "shelf"
    pool = descriptor_pool.Default()
    pool.Add(file_proto)
    return pool.FindServiceByName(f"{package}.ShelfService")


@pytest.fixture(scope="module")
def shelf_routes():
    return {b.method.name: b for b in route_table({"shelves": _annotated_service()})}


def test_a_new_annotated_rpc_becomes_a_route_with_no_gateway_code(shelf_routes):
    binding = shelf_routes["MoveShelf"]
    assert (binding.verb, binding.template, binding.rule) == (
        "POST",
        "/shelves/{shelf_id}/moves",
        "/shelves/<shelf_id>/moves",
    )
    request = build_request(binding, {"shelf_id": "S1"}, [], b'{"floor": 3}')
    assert (request.shelf_id, request.floor) == ("S1", 3)
    response = binding.response_class(shelf_id="S1", books=12)
    assert message_to_json(response) == {"shelf_id": "S1", "books": 12}
    assert location_for(binding, response) == "/shelves/S1"
    assert binding.success_status == 201


def test_a_body_bound_to_one_field_fills_that_field_and_query_fills_the_rest(shelf_routes):
    binding = shelf_routes["UpdateShelf"]
    assert (binding.verb, binding.body) == ("PATCH", "shelf")
    request = build_request(
        binding, {"shelf_id": "S1"}, [("dry_run_level", "2")], b'{"books": 40}'
    )
    assert (request.shelf_id, request.shelf.books, request.dry_run_level) == ("S1", 40, 2)
    with pytest.raises(RequestError) as info:
        build_request(binding, {"shelf_id": "S1"}, [], b'{"books": "many"}')
    assert [f for f, _ in info.value.violations] == ["shelf.books"]


# JSON -> request


def test_body_fields_fill_the_request(routes):
    body = b'{"customer_id": "C123", "items": [{"product_id": "P001", "quantity": 2}], "payment_method": "tok_visa"}'
    request = build_request(routes[("POST", "/orders")], {}, [], body)
    assert request.customer_id == "C123"
    assert [(i.product_id, i.quantity) for i in request.items] == [("P001", 2)]


def test_flat_order_body_passes_through_for_the_order_service_to_normalise(routes):
    body = b'{"product_id": "P001", "quantity": 2, "customer_id": "C123"}'
    request = build_request(routes[("POST", "/orders")], {}, [], body)
    assert (request.product_id, request.quantity, request.customer_id) == ("P001", 2, "C123")


def _refusal(binding, body=b"{}", query=(), path=None) -> RequestError:
    with pytest.raises(RequestError) as info:
        build_request(binding, path or {}, list(query), body)
    return info.value


def test_unknown_body_field_is_refused_by_name(routes):
    error = _refusal(routes[("POST", "/orders")], b'{"customer_id": "C1", "colour": "red"}')
    assert ("colour", "unknown field") in error.violations


@pytest.mark.parametrize(
    "body, field",
    [
        (b'{"quantity": "two"}', "quantity"),
        (b'{"quantity": "2"}', "quantity"),
        (b'{"items": [{"product_id": "P001", "quantity": "2"}]}', "items[0].quantity"),
        (b'{"quantity": 2.5}', "quantity"),
        (b'{"quantity": true}', "quantity"),
        (b'{"quantity": 99999999999}', "quantity"),
        (b'{"customer_id": 5}', "customer_id"),
        (b'{"items": {"product_id": "P001"}}', "items"),
        (b'{"items": ["P001"]}', "items[0]"),
        (b'{"items": [{"quantity": "x"}]}', "items[0].quantity"),
    ],
)
def test_wrong_json_types_are_refused_by_field(routes, body, field):
    error = _refusal(routes[("POST", "/orders")], body)
    assert [f for f, _ in error.violations] == [field]


def test_type_errors_never_echo_the_value(routes):
    body = b'{"card": {"number": 4242424242424242, "cvc": 123}}'
    error = _refusal(routes[("POST", "/payment_methods")], body)
    assert {f for f, _ in error.violations} == {"card.number", "card.cvc"}
    assert "4242" not in error.message and "123" not in error.message


@pytest.mark.parametrize(
    "body",
    [b"not json", b"", b"[1, 2]", b"null", b'{"quantity": NaN}', b"customer_id=C1", b"[" * 5000],
)
def test_a_body_that_is_not_a_json_object_is_refused(routes, body):
    error = _refusal(routes[("POST", "/orders")], body)
    assert error.message




def test_refused_field_is_refused_with_its_message(routes):
    body = b'{"customer_id": "C1", "card": {"number": "4242424242424242"}}'
    error = _refusal(routes[("POST", "/orders")], body)
    assert [f for f, _ in error.violations] == ["card"]
    assert "/payment_methods" in error.message
    assert "4242" not in error.message


def test_path_parameter_fills_the_request_and_merges_into_a_star_body(routes):
    binding = routes[("POST", "/inventory/{product_id}/adjustments")]
    request = build_request(binding, {"product_id": "P001"}, [], b'{"delta": 5}')
    assert (request.product_id, request.delta) == ("P001", 5)
    same = build_request(
        binding, {"product_id": "P001"}, [], b'{"product_id": "P001", "delta": 5}'
    )
    assert same.product_id == "P001"


def test_body_that_contradicts_the_path_is_refused(routes):
    error = _refusal(
        routes[("PUT", "/inventory/{product_id}")],
        b'{"product_id": "P002", "name": "x"}',
        path={"product_id": "P001"},
    )
    assert [f for f, _ in error.violations] == ["product_id"]


def test_query_parameters_fill_unbound_fields(routes):
    request = build_request(
        routes[("GET", "/orders")],
        {},
        [("customer_id", "C1"), ("page_size", "20"), ("page_token", "abc")],
        None,
    )
    assert (request.customer_id, request.page_size, request.page_token) == ("C1", 20, "abc")


@pytest.mark.parametrize(
    "query, field",
    [
        ([("page_size", "abc")], "page_size"),
        ([("page_size", "1.5")], "page_size"),
        ([("page_size", "99999999999")], "page_size"),
        ([("colour", "red")], "colour"),
        ([("page_size", "1"), ("page_size", "2")], "page_size"),
        # One field under both its names, as a body refuses it: neither wins.
        ([("page_size", "3"), ("pageSize", "1")], "pageSize"),
        ([("customerId", "C2"), ("customer_id", "C1")], "customer_id"),
    ],
)
def test_bad_or_unknown_query_parameters_are_refused(routes, query, field):
    error = _refusal(routes[("GET", "/orders")], None, query=query)
    assert [f for f, _ in error.violations] == [field]


def test_a_query_field_may_come_by_its_json_name(routes):
    request = build_request(routes[("GET", "/orders")], {}, [("pageSize", "20"), ("customerId", "C1")], None)
    assert (request.customer_id, request.page_size) == ("C1", 20)


def test_a_field_under_both_names_is_named_in_the_refusal(routes):
    error = _refusal(routes[("GET", "/orders")], None, query=[("page_size", "3"), ("pageSize", "1")])
    assert error.violations == [("pageSize", "given twice (as page_size and pageSize)")]


def test_query_parameter_cannot_rebind_a_path_field(routes):
    error = _refusal(
        routes[("GET", "/orders/{order_id}")], None, query=[("order_id", "other")], path={"order_id": "o1"}
    )
    assert error.violations == [("order_id", "unknown query parameter")]


def test_star_body_routes_take_no_query_parameters(routes):
    error = _refusal(
        routes[("POST", "/inventory/check")],
        b'{"product_id": "P001", "quantity": 1}',
        query=[("dry_run", "1")],
    )
    assert error.violations == [("dry_run", "unknown query parameter")]


# response -> JSON


def test_int64_fields_render_as_json_numbers():
    product = inventory_pb.Product(
        product_id="P001", name="Mouse", price_cents=1999, currency="USD", available=2**40
    )
    rendered = message_to_json(product)
    assert rendered == {
        "product_id": "P001",
        "name": "Mouse",
        "price_cents": 1999,
        "currency": "USD",
        "available": 2**40,
    }
    assert type(rendered["price_cents"]) is int


def test_nested_and_repeated_int64_render_as_numbers_and_enums_as_names():
    order = order_pb.Order(
        id="o1",
        status=order_pb.CONFIRMED,
        items=[order_pb.OrderItem(product_id="P001", quantity=2, unit_price_cents=1999)],
        total_cents=3998,
    )
    order.created_at.FromJsonString("2026-11-21T10:00:00Z")
    rendered = message_to_json(order)
    assert rendered["status"] == "CONFIRMED"
    assert rendered["total_cents"] == 3998
    assert rendered["items"] == [{"product_id": "P001", "quantity": 2, "unit_price_cents": 1999}]
    assert rendered["created_at"] == "2026-11-21T10:00:00Z"


def test_every_field_is_printed_so_the_shape_is_stable():
    rendered = message_to_json(payment_pb.Payment())
    assert set(rendered) == {f.name for f in payment_pb.Payment.DESCRIPTOR.fields}
    assert rendered["amount_cents"] == 0
    assert rendered["status"] == "PAYMENT_STATUS_UNSPECIFIED"
    assert rendered["decline_reason"] == ""
    assert rendered["created_at"] is None


def test_integers_in_a_body_are_json_numbers_not_strings(routes):
    error = _refusal(
        routes[("PUT", "/inventory/{product_id}")], b'{"price_cents": "1999"}', path={"product_id": "P001"}
    )
    assert error.violations == [("price_cents", "must be a 64-bit integer (a JSON number, not a string)")]
    # An integral number is still an integer, however it is written.
    request = build_request(routes[("POST", "/orders")], {}, [], b'{"product_id": "P001", "quantity": 2.0}')
    assert request.quantity == 2
