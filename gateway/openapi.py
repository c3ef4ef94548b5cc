"""/openapi.json: an OpenAPI 3 document generated from the same route table
and message descriptors the gateway serves from, so it cannot drift. This
module documents the operations; the schemas of messages and fields, with
the field rules the protos declare, come from gateway/schemas.py."""

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.auth import Demand, Gatekeeper
from gateway.errors import HTTP_STATUS_BY_REASON
from gateway.schemas import REF, MessageSchemas, must_be_given
from gateway.transcoding import Binding
from gateway.transcoding.json_types import WELL_KNOWN_TYPES
from gateway.transcoding.routes import field_at
from plumbing.identity import ADMIN_SCOPE

ERROR_SCHEMA = "Error"
# The bearer scheme of each AUTH mode: ADMIN_TOKEN (off) or a JWT (jwt).
ADMIN_TOKEN_SCHEME = "adminToken"
JWT_SCHEME = "bearerJwt"


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


def _error_response(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF + ERROR_SCHEMA}}},
    }


def _operation(binding: Binding, schemas: MessageSchemas, gatekeeper: Gatekeeper) -> dict:
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
        "operationId": binding.endpoint,
        "tags": [binding.backend],
        "summary": f"{method.containing_service.full_name}.{method.name}",
        "parameters": parameters,
    }
    if binding.body == "*":
        body_schema = schemas.message(method.input_type, leave_out=path_fields)
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_schema}},
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
    if binding.options.refused_fields:
        operation["description"] = " ".join(
            f"A `{refused.name}` field is refused (400): {refused.message}."
            for refused in binding.options.refused_fields
        )
    success: dict = {
        "description": "Created" if binding.options.created else "OK",
        "content": {"application/json": {"schema": schemas.ref(method.output_type)}},
    }
    if binding.options.location:
        success["headers"] = {
            "Location": {"schema": {"type": "string"}, "description": binding.options.location}
        }
    responses = {str(binding.success_status): success}
    # Secured exactly where the gateway refuses a request without credentials.
    demand = gatekeeper.demand(binding)
    if demand is not Demand.NOTHING and not gatekeeper.jwt:
        operation["security"] = [{ADMIN_TOKEN_SCHEME: []}]
        responses["401"] = _error_response("Missing or wrong admin token")
        responses["403"] = _error_response("Admin routes are disabled (no ADMIN_TOKEN)")
    elif demand is not Demand.NOTHING:
        operation["security"] = [{JWT_SCHEME: []}]
        responses["401"] = _error_response("No token, or a bad or expired one")
        if demand is Demand.ADMIN:
            responses["403"] = _error_response(f"A token without the {ADMIN_SCOPE} scope")
        elif "customer_id" in binding.method.input_type.fields_by_name:
            responses["403"] = _error_response("customer_id names another customer")
    responses["429"] = _error_response("Over the rate limit (see Retry-After)")
    responses["503"] = _error_response("A backend or its database is unavailable for now (see Retry-After)")
    responses["default"] = _error_response("An error in the API's error shape")
    operation["responses"] = responses
    return operation


def openapi_document(bindings: list[Binding], operations_routes: tuple, gatekeeper: Gatekeeper) -> dict:
    """The document of `bindings` and of the gateway's `operations_routes`
    (gateway/operations.py's OPERATIONS_ROUTES), as `gatekeeper` secures them."""
    schemas = MessageSchemas()
    paths: dict[str, dict] = {}
    for binding in bindings:
        paths.setdefault(binding.template, {})[binding.verb.lower()] = _operation(binding, schemas, gatekeeper)
    for route in operations_routes:
        path, description, schema = route.path, route.summary, route.schema
        content = (
            {"application/json": {"schema": schema}}
            if schema is not None
            else {"text/plain": {"schema": {"type": "string"}}}
        )
        responses = {"200": {"description": description, "content": content}}
        if path == "/ready":
            responses["503"] = _error_response("A backend is not SERVING; the body lists each backend")
        responses["default"] = _error_response("An error in the API's error shape")
        paths[path] = {
            "get": {
                "operationId": "operations_"
                + path.strip("/").replace("/", "_").replace("-", "_").replace(".", "_"),
                "tags": ["operations"],
                "summary": description,
                "responses": responses,
            }
        }
    schemas.components[ERROR_SCHEMA] = {
        "type": "object",
        "required": ["error", "request_id"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "status", "reason", "message", "details"],
                "properties": {
                    "code": {"type": "integer", "description": "the HTTP status"},
                    "status": {"type": "string", "description": "the gRPC code name"},
                    "reason": {
                        "type": "string",
                        "description": "a stable UPPER_SNAKE cause, e.g. " + ", ".join(HTTP_STATUS_BY_REASON),
                    },
                    "message": {"type": "string"},
                    "details": {"type": "array", "items": {"type": "object", "additionalProperties": True}},
                },
            },
            "request_id": {"type": "string"},
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Shop REST gateway",
            "version": "1.0.0",
            "description": "Generated from the google.api.http annotations of the shop's protos.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": (
                {JWT_SCHEME: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
                if gatekeeper.jwt
                else {ADMIN_TOKEN_SCHEME: {"type": "http", "scheme": "bearer"}}
            ),
        },
    }
