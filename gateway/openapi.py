"""/openapi.json: an OpenAPI 3 document generated from the same route table
and message descriptors the gateway serves from, so it cannot drift. This
module puts it together: each route's path, parameters and bodies. What each
operation answers, the headers, security, examples and links come from
gateway/openapi_operations.py; the schemas of messages and fields, with the
field rules the protos declare, from gateway/schemas.py."""

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway import openapi_operations as operations
from gateway.auth import Gatekeeper
from gateway.openapi_examples import OPERATIONS_EXAMPLES
from gateway.schemas import MessageSchemas, must_be_given
from gateway.transcoding import Binding
from gateway.transcoding.json_types import WELL_KNOWN_TYPES
from gateway.transcoding.routes import field_at


def _query_parameters(
    descriptor: Descriptor, bound: set[str], schemas: MessageSchemas, prefix: str = "", depth: int = 0
):
    parameters = []
    for field in descriptor.fields:
        path = f"{prefix}{field.name}"
        if path in bound:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry or field.message_type.full_name in WELL_KNOWN_TYPES:
                continue
            if depth < 3 and not field.is_repeated:
                parameters += _query_parameters(field.message_type, bound, schemas, path + ".", depth + 1)
            continue
        parameters.append(
            {"name": path, "in": "query", "required": must_be_given(field), "schema": schemas.parameter(field)}
        )
    return parameters


def _null_means_unset(body: dict) -> dict:
    """A request body's optional fields may be null: proto3's JSON mapping
    reads null as the field's default, as if it were left out."""
    required = set(body.get("required", ()))
    for name, schema in body["properties"].items():
        if name not in required and not schema.get("nullable"):
            body["properties"][name] = (
                {"allOf": [schema], "nullable": True} if "$ref" in schema else {**schema, "nullable": True}
            )
    return body


def _operation(binding: Binding, schemas: MessageSchemas, gatekeeper: Gatekeeper, shadowed_by: list[str]) -> dict:
    method = binding.method
    path_fields = {variable.field_path for variable in binding.variables}
    parameters = [
        {
            "name": variable.field_path,
            "in": "path",
            "required": True,
            "schema": schemas.parameter(field_at(method.input_type, variable.field_path)),
        }
        for variable in binding.variables
    ]
    operation: dict = {
        "operationId": operations.operation_id(binding),
        "tags": [binding.backend],
        "summary": f"{method.containing_service.full_name}.{method.name}",
        "parameters": parameters,
    }
    if binding.body == "*":
        body_schema = schemas.message(method.input_type, leave_out=path_fields)
        body_schema = _null_means_unset(operations.customer_named(body_schema, gatekeeper.jwt))
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_schema, **operations.request_example(binding)}},
        }
    elif binding.body:
        field = method.input_type.fields_by_name[binding.body]
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas.single(field)}},
        }
        parameters += _query_parameters(method.input_type, path_fields | {binding.body}, schemas)
    else:
        parameters += _query_parameters(method.input_type, path_fields, schemas)
    parameters += operations.request_headers(binding)
    if binding.options.refused_fields:
        operation["description"] = " ".join(
            f"A `{refused.name}` field is refused (400): {refused.message}."
            for refused in binding.options.refused_fields
        )
    # Secured exactly where the gateway refuses a request without credentials.
    demand = gatekeeper.demand(binding)
    security = operations.security(demand, gatekeeper.jwt)
    if security is not None:
        operation["security"] = security
    responses = operations.transcoded_responses(binding, demand, gatekeeper.jwt, shadowed_by)
    responses[str(binding.success_status)]["content"]["application/json"]["schema"] = schemas.ref(method.output_type)
    operation["responses"] = responses
    return operation


def openapi_document(bindings: list[Binding], operations_routes: tuple, gatekeeper: Gatekeeper) -> dict:
    """The document of `bindings` and of the gateway's `operations_routes`
    (gateway/operations.py's OPERATIONS_ROUTES), as `gatekeeper` secures them."""
    schemas = MessageSchemas()
    paths: dict[str, dict] = {}
    for binding in bindings:
        paths.setdefault(binding.template, {})[binding.verb.lower()] = _operation(
            binding, schemas, gatekeeper, operations.shadowing_templates(binding, bindings)
        )
    for route in operations_routes:
        path, description, schema = route.path, route.summary, route.schema
        content = (
            {"application/json": {"schema": schema, **_example(OPERATIONS_EXAMPLES.get(path))}}
            if schema is not None
            else {"text/plain": {"schema": {"type": "string"}}}
        )
        paths[path] = {
            "get": {
                "operationId": route.operation_id,
                "tags": ["operations"],
                "summary": description,
                "parameters": operations.request_headers(None),
                "responses": operations.operations_route_responses(path, description, content),
            }
        }
    schemas.components[operations.ERROR_SCHEMA] = operations.error_schema()
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Shop REST gateway",
            "version": "1.0.0",
            "description": "Generated from the google.api.http annotations of the shop's protos. "
            + (
                "AUTH=jwt: every route but the catalog and the operations routes takes a customer's JWT."
                if gatekeeper.jwt
                else "AUTH=off: only the admin routes take a token (ADMIN_TOKEN)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "headers": operations.header_components(),
            "parameters": operations.parameter_components(),
            "securitySchemes": operations.security_schemes(gatekeeper.jwt),
        },
    }


def _example(example) -> dict:
    return {"example": example} if example is not None else {}
