"""/openapi.json documents each operation completely: every status it can
answer (no catch-all `default`), each error with the API's shape, its code
and its reasons; the headers each answer carries and each route reads; an
operationId of the RPC's name; links that name real operations; and
examples that are what the schemas say. tests/test_contract_fuzz.py checks
the document against the running shop."""

import os
from unittest import mock

import jsonschema
import pytest

from gateway.auth import Gatekeeper
from gateway.config import AuthConfig, GatewayConfig
from gateway.errors import HTTP_STATUS_BY_REASON
from gateway.openapi import openapi_document
from gateway.openapi_operations import resolved
from gateway.operations import OPERATIONS_ROUTES
from gateway.transcoding import route_table
from gateway.upstreams import SERVICES

BINDINGS = route_table(SERVICES)
OPERATIONS_PATHS = {route.path for route in OPERATIONS_ROUTES}


def document_in(mode: str) -> dict:
    with mock.patch.dict(os.environ, clear=True):
        config = GatewayConfig.from_env()
    if mode == "jwt":
        config = GatewayConfig(**{**vars(config), "auth": AuthConfig("jwt", hs256_secret="s" * 32)})
    return openapi_document(BINDINGS, OPERATIONS_ROUTES, Gatekeeper(config))


@pytest.fixture(params=["off", "jwt"], scope="module")
def document(request) -> dict:
    return document_in(request.param)


def operations(document: dict):
    for path, item in document["paths"].items():
        for verb, operation in item.items():
            yield path, verb, operation


def headers_of(document: dict, response: dict) -> dict:
    return {name: resolved(document, header) for name, header in response.get("headers", {}).items()}


def test_no_operation_hides_its_answers_behind_default(document):
    for path, verb, operation in operations(document):
        assert "default" not in operation["responses"], (verb, path)
        assert any(status.startswith("2") for status in operation["responses"]), (verb, path)


def test_every_error_answer_has_the_error_shape_its_code_and_its_reasons(document):
    for path, verb, operation in operations(document):
        for status, response in operation["responses"].items():
            if status.startswith("2"):
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema["allOf"][0] == {"$ref": "#/components/schemas/Error"}, (verb, path, status)
            error = schema["allOf"][1]["properties"]["error"]["properties"]
            assert error["code"]["enum"] == [int(status)]
            assert error["reason"]["enum"], (verb, path, status)
            assert all(reason in response["description"] for reason in error["reason"]["enum"])


def test_every_reason_of_the_contract_is_documented_with_its_status(document):
    documented = set()
    for _, _, operation in operations(document):
        for status, response in operation["responses"].items():
            if not status.startswith("2"):
                reasons = response["content"]["application/json"]["schema"]["allOf"][1]
                for reason in reasons["properties"]["error"]["properties"]["reason"]["enum"]:
                    documented.add((reason, int(status)))
    expected = {
        *HTTP_STATUS_BY_REASON.items(),
        ("INVALID_ARGUMENT", 400),
        ("PAYLOAD_TOO_LARGE", 413),
        ("NOT_FOUND", 404),
        ("METHOD_NOT_ALLOWED", 405),
        ("UNAUTHENTICATED", 401),
        ("PERMISSION_DENIED", 403),
        ("RATE_LIMITED", 429),
        ("UNAVAILABLE", 503),
        ("DEADLINE_EXCEEDED", 504),
        ("NOT_READY", 503),
    }
    assert expected <= documented, expected - documented


def test_the_statuses_of_each_kind_of_route(document):
    paths = document["paths"]
    shared = {"400", "429", "500", "503", "504"}
    for binding in BINDINGS:
        answers = set(paths[binding.template][binding.verb.lower()]["responses"])
        assert shared | {str(binding.success_status)} <= answers, binding.template
        assert ("413" in answers) == bool(binding.body), binding.template
    create = set(paths["/orders"]["post"]["responses"])
    assert {"201", "402", "404", "409", "422"} <= create
    assert {"404", "409"} <= set(paths["/orders/{order_id}"]["delete"]["responses"])
    # GET and PUT of /inventory/check are not /inventory/{product_id}: 405.
    assert "405" in paths["/inventory/{product_id}"]["get"]["responses"]
    assert "405" in paths["/inventory/{product_id}"]["put"]["responses"]
    assert "405" not in paths["/orders/{order_id}"]["get"]["responses"]
    for path in OPERATIONS_PATHS:
        assert "429" not in paths[path]["get"]["responses"], "the operations routes are not rate limited"
    assert "503" in paths["/ready"]["get"]["responses"]


def test_401_and_403_are_documented_exactly_on_secured_operations(document):
    for path, verb, operation in operations(document):
        secured = "security" in operation
        assert ("401" in operation["responses"]) == secured, (verb, path)
        if secured:
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]


def test_every_answer_carries_its_headers(document):
    for path, verb, operation in operations(document):
        limited = path not in OPERATIONS_PATHS
        for status, response in operation["responses"].items():
            headers = headers_of(document, response)
            assert headers["X-Request-ID"]["required"], (verb, path, status)
            rate_headers = {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
            assert (rate_headers <= set(headers)) == limited, (verb, path, status)
            if status == "429" or (status == "503" and limited):
                assert headers["Retry-After"]["required"], (verb, path, status)
            if status == "405":
                assert headers["Allow"]["required"]
            if status == "201":
                assert headers["Location"]["required"] and headers["Location"]["description"].startswith("/")


def test_every_route_reads_the_request_id_and_traceparent_and_orders_take_an_idempotency_key(document):
    for path, verb, operation in operations(document):
        names = {
            resolved(document, parameter)["name"]
            for parameter in operation["parameters"]
            if resolved(document, parameter)["in"] == "header"
        }
        expected = {"X-Request-ID", "traceparent"}
        if (verb, path) == ("post", "/orders"):
            expected.add("Idempotency-Key")
        assert names == expected, (verb, path)


def test_operation_ids_are_the_rpc_names_and_stable_names_for_the_operations_routes(document):
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))
    for binding in BINDINGS:
        assert document["paths"][binding.template][binding.verb.lower()]["operationId"] == binding.method.name
    for route in OPERATIONS_ROUTES:
        assert document["paths"][route.path]["get"]["operationId"] == route.operation_id


def test_security_follows_the_mode():
    off, jwt = document_in("off"), document_in("jwt")
    assert set(off["components"]["securitySchemes"]) == {"adminToken"}
    assert set(jwt["components"]["securitySchemes"]) == {"bearerJwt"}
    assert off["paths"]["/orders"]["post"].get("security") is None
    assert jwt["paths"]["/orders"]["post"]["security"] == [{"bearerJwt": []}]
    assert "403" in jwt["paths"]["/orders"]["post"]["responses"]  # customer_id of another customer
    assert jwt["paths"]["/inventory"]["get"].get("security") is None


def test_links_name_real_operations_and_their_parameters(document):
    by_id = {operation["operationId"]: operation for _, _, operation in operations(document)}
    links = {}
    for _, _, operation in operations(document):
        for response in operation["responses"].values():
            for name, link in response.get("links", {}).items():
                links[(operation["operationId"], name)] = link
                target = by_id[link["operationId"]]
                parameters = {resolved(document, p)["name"] for p in target["parameters"]}
                assert set(link.get("parameters", {})) <= parameters, name
                if "requestBody" in link:
                    body = target["requestBody"]["content"]["application/json"]["schema"]["properties"]
                    assert set(link["requestBody"]) <= set(body)
    # The chains the stateful tests follow: order -> get -> cancel; payment method -> order.
    assert links[("CreateOrder", "GetOrder")]["parameters"] == {"order_id": "$response.body#/id"}
    assert links[("GetOrder", "CancelOrder")]["parameters"] == {"order_id": "$response.body#/id"}
    assert links[("CreatePaymentMethod", "CreateOrderWithIt")]["requestBody"] == {
        "payment_method": "$response.body#/id"
    }


def as_json_schema(node):
    """An OpenAPI 3.0 schema as JSON Schema: `nullable` becomes a null type."""
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: as_json_schema(value) for key, value in node.items() if key not in ("nullable", "example")}
    if node.get("nullable"):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def validate(document: dict, example, schema: dict) -> None:
    root = {"components": {"schemas": as_json_schema(document["components"]["schemas"])}, **as_json_schema(schema)}
    jsonschema.Draft4Validator(root).validate(example)


def test_every_example_is_what_its_schema_says(document):
    checked = 0
    for path, verb, operation in operations(document):
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        if body:
            assert "example" in body, (verb, path)
            validate(document, body["example"], body["schema"])
            checked += 1
        for status, response in operation["responses"].items():
            content = response.get("content", {}).get("application/json")
            if content is None:
                continue
            assert "example" in content, (verb, path, status)
            validate(document, content["example"], content["schema"])
            checked += 1
    assert checked > 100


def test_an_example_that_breaks_its_schema_is_caught(document):
    order = document["paths"]["/orders"]["post"]["responses"]["201"]["content"]["application/json"]
    with pytest.raises(jsonschema.ValidationError):
        validate(document, {**order["example"], "total_cents": "3998"}, order["schema"])


def test_an_order_names_its_customer_unless_a_token_does():
    off = document_in("off")["paths"]["/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    jwt = document_in("jwt")["paths"]["/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "customer_id" in off["required"] and off["properties"]["customer_id"]["minLength"] == 1
    assert "customer_id" not in jwt.get("required", []) and jwt["properties"]["customer_id"]["nullable"]


def test_an_optional_body_field_may_be_null_as_proto3_json_reads_it(document):
    adjust = document["paths"]["/inventory/{product_id}/adjustments"]["post"]["requestBody"]
    schema = adjust["content"]["application/json"]["schema"]
    assert schema["properties"]["reason"]["nullable"] and not schema["properties"]["delta"].get("nullable")
