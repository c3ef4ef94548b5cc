"""HTTP <-> gRPC transcoding driven by the protos: the route table comes from
each public RPC's google.api.http rule and its shop.api.v1.http options, and
JSON is converted to and from messages by walking their descriptors.

Request JSON is checked against the descriptor here, before json_format sees
it, so that every error names the field and none echoes a value back (a
value may be a card number).
"""

import base64
import binascii
import functools
import json
import math
import re
import urllib.parse
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from shop.api.v1 import http_options_pb2


class RequestError(Exception):
    """A request the gateway refuses before calling anything (HTTP 400)."""

    def __init__(self, message: str | None = None, violations: list[tuple[str, str]] = ()):
        self.violations = list(violations)
        self.message = message or "; ".join(f"{f}: {d}" for f, d in self.violations)
        super().__init__(self.message)


def invalid(violations: list[tuple[str, str]]) -> RequestError:
    return RequestError(violations=violations)


@dataclass(frozen=True)
class PathVariable:
    # The Flask rule variable and the request field it fills ("a.b" for nested).
    rule_name: str
    field_path: str


@dataclass(frozen=True)
class Binding:
    """One public route: an HTTP verb and path bound to one RPC."""

    backend: str
    method: MethodDescriptor
    # The Flask endpoint: "OrderService_GetOrder" (no dots: Flask reads those
    # as blueprints), "_1", "_2"... for additional bindings.
    endpoint: str
    verb: str
    # The annotation's path template ("/orders/{order_id}"): the route's name
    # in metrics, logs and OpenAPI.
    template: str
    rule: str
    variables: tuple[PathVariable, ...]
    # "" (no body), "*" (the whole request) or the name of one request field.
    body: str
    response_body: str
    options: http_options_pb2.HttpOptions

    # Worked out once per route, not on every request.

    @functools.cached_property
    def full_method(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @functools.cached_property
    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @functools.cached_property
    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)

    @functools.cached_property
    def refused_fields(self) -> dict[str, str]:
        return {refused.name: refused.message for refused in self.options.refused_fields}

    @property
    def success_status(self) -> int:
        return 201 if self.options.created else 200


_VERBS = ("get", "put", "post", "delete", "patch")
_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:=([^}]*))?\}")


def route_table(backends: dict[str, ServiceDescriptor]) -> list[Binding]:
    """Every public route of the given services: each RPC with a google.api.http
    rule (and its additional_bindings); RPCs without one stay internal."""
    bindings = []
    for backend, service in backends.items():
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rule = options.Extensions[annotations_pb2.http]
            shop_options = options.Extensions[http_options_pb2.http]
            for index, http_rule in enumerate((rule, *rule.additional_bindings)):
                endpoint = f"{service.name}_{method.name}" + (f"_{index}" if index else "")
                bindings.append(_binding(backend, method, endpoint, http_rule, shop_options))
    return bindings


def _binding(
    backend: str, method: MethodDescriptor, endpoint: str, rule: http_pb2.HttpRule, options
) -> Binding:
    pattern_kind = rule.WhichOneof("pattern")
    if pattern_kind in _VERBS:
        verb, template = pattern_kind.upper(), getattr(rule, pattern_kind)
    elif pattern_kind == "custom":
        verb, template = rule.custom.kind.upper(), rule.custom.path
    else:
        raise ValueError(f"{method.full_name}: google.api.http rule has no path")
    variables = []

    def to_rule_variable(match: re.Match) -> str:
        field_path, segments = match.group(1), match.group(2)
        _field_at(method.input_type, field_path)  # fails loudly on a typo in the proto
        rule_name = field_path.replace(".", "__")
        variables.append(PathVariable(rule_name, field_path))
        # "{name}" and "{name=*}" bind one segment; anything longer may span several.
        return f"<{rule_name}>" if segments in (None, "*") else f"<path:{rule_name}>"

    flask_rule = _VARIABLE.sub(to_rule_variable, template)
    if rule.body not in ("", "*"):
        _field_at(method.input_type, rule.body)
    return Binding(
        backend=backend,
        method=method,
        endpoint=endpoint,
        verb=verb,
        template=_VARIABLE.sub(lambda m: "{" + m.group(1) + "}", template),
        rule=flask_rule,
        variables=tuple(variables),
        body=rule.body,
        response_body=rule.response_body,
        options=options,
    )


def _field_at(descriptor: Descriptor, field_path: str) -> FieldDescriptor:
    field = None
    for name in field_path.split("."):
        if descriptor is None:
            raise ValueError(f"{field_path}: {name} is not inside a message")
        field = descriptor.fields_by_name.get(name)
        if field is None:
            raise ValueError(f"{descriptor.full_name} has no field {name!r}")
        descriptor = field.message_type
    return field


# --- requests ----------------------------------------------------------------


def build_request(
    binding: Binding,
    path_values: dict[str, str],
    query: list[tuple[str, str]],
    body: bytes | None,
) -> Message:
    """The request message of `binding` from the path, query and JSON body."""
    request = binding.request_class()
    if binding.body:
        document = parse_json_body(body)
        if binding.body == "*":
            _refuse_fields(binding, document)
        else:
            # The body is one field's value (a message, list or scalar).
            document = {binding.body: document}
        _check_message_json(document, request.DESCRIPTOR)
        _parse_into(document, request)
    for variable in binding.variables:
        _set_path_field(request, variable.field_path, path_values[variable.rule_name], binding)
    if query:
        _apply_query(request, binding, query)
    return request


def parse_json_body(body: bytes | None) -> object:
    """The JSON document of a body. A body that is JSON is taken whatever its
    Content-Type says, as grpc-gateway does: `curl -d` labels JSON as a form."""
    if not body or not body.strip():
        raise RequestError("the request body must be a JSON object")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise RequestError(
            "the request body is not valid JSON (send a JSON object, Content-Type: application/json)"
        ) from None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _refuse_fields(binding: Binding, document: object) -> None:
    if not isinstance(document, dict):
        return
    refused = [
        (name, message)
        for name, message in binding.refused_fields.items()
        if name in document or _camel(name) in document
    ]
    if refused:
        raise invalid(refused)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _parse_into(document: dict, target: Message) -> None:
    """Fill `target` from a document _check_message_json has passed: every
    value is of its field's JSON type already, so this only converts (enum
    names, integral floats, base64) and assigns, as json_format.ParseDict
    would, without its generic walk."""
    try:
        _fill(document, target)
    except (json_format.ParseError, ValueError, TypeError):
        # The checks above catch what they can name; this message never
        # carries the converter's text, which may quote values.
        raise RequestError(f"the request body does not match {target.DESCRIPTOR.name}") from None


def _fill(document: dict, target: Message) -> None:
    fields = _json_fields(target.DESCRIPTOR)
    for key, value in document.items():
        field = fields[key]
        if value is None and not _is_value_type(field):
            continue  # proto3 JSON: null means the default
        if _is_map(field) or (
            field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name in _WELL_KNOWN_FORMS
        ):
            # Rare shapes with JSON forms of their own: json_format, for this field alone.
            json_format.ParseDict({field.json_name: value}, target, ignore_unknown_fields=False)
        elif field.is_repeated:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                items = getattr(target, field.name)
                for element in value:
                    _fill(element, items.add())
            else:
                getattr(target, field.name).extend(_scalar_from_json(element, field) for element in value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            _fill(value, getattr(target, field.name))
            # An empty object still sets the field.
            getattr(target, field.name).SetInParent()
        else:
            setattr(target, field.name, _scalar_from_json(value, field))


def _scalar_from_json(value, field: FieldDescriptor):
    kind = field.type
    if kind == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_name[value].number if isinstance(value, str) else value
    if kind in _INT_RANGES:
        return _as_int(value, field)
    if kind in _FLOAT_TYPES:
        return float(value)
    if kind == FieldDescriptor.TYPE_BYTES:
        return _decode_base64(value)
    return value


_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1, "a 32-bit integer"),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1, "a 32-bit integer"),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1, "a 32-bit integer"),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1, "an unsigned 32-bit integer"),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1, "an unsigned 32-bit integer"),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1, "a 64-bit integer"),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1, "a 64-bit integer"),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1, "a 64-bit integer"),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1, "an unsigned 64-bit integer"),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1, "an unsigned 64-bit integer"),
}
_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}
_FLOAT_TYPES = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
_FLOAT_WORDS = {"NaN", "Infinity", "-Infinity"}
# Well-known types with their own JSON form: checked by parsing one alone.
_WELL_KNOWN_FORMS = {
    "google.protobuf.Timestamp": "an RFC 3339 timestamp such as 2026-11-21T10:00:00Z",
    "google.protobuf.Duration": "a duration such as 1.5s",
    "google.protobuf.FieldMask": "a comma-separated list of field paths",
    "google.protobuf.Struct": "a JSON object",
    "google.protobuf.Value": "any JSON value",
    "google.protobuf.ListValue": "a JSON array",
    "google.protobuf.Any": "an object with @type",
    "google.protobuf.Empty": "an empty object",
    "google.protobuf.DoubleValue": "a number",
    "google.protobuf.FloatValue": "a number",
    "google.protobuf.Int64Value": "an integer",
    "google.protobuf.UInt64Value": "an unsigned integer",
    "google.protobuf.Int32Value": "an integer",
    "google.protobuf.UInt32Value": "an unsigned integer",
    "google.protobuf.BoolValue": "true or false",
    "google.protobuf.StringValue": "a string",
    "google.protobuf.BytesValue": "base64 text",
}


# The descriptor questions below are asked for every field of every request
# and answer; each is answered once per descriptor (cached, never mutated).


@functools.cache
def _json_fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    # proto3 JSON accepts both the field name and its lowerCamel json_name.
    fields = {field.json_name: field for field in descriptor.fields}
    fields.update(descriptor.fields_by_name)
    return fields


def _check_message_json(document: object, descriptor: Descriptor) -> None:
    violations: list[tuple[str, str]] = []
    _check_object(document, descriptor, "", violations)
    if violations:
        raise invalid(violations)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _check_object(value: object, descriptor: Descriptor, path: str, violations: list) -> None:
    if not isinstance(value, dict):
        if not path:
            raise RequestError("the request body must be a JSON object")
        violations.append((path, "must be a JSON object"))
        return
    fields = _json_fields(descriptor)
    seen: set[str] = set()
    for key, item in value.items():
        field = fields.get(key)
        field_path = _join(path, key)
        if field is None:
            violations.append((field_path, "unknown field"))
            continue
        if field.name in seen:
            violations.append((field_path, "given twice (as snake_case and camelCase)"))
            continue
        seen.add(field.name)
        if item is None and not _is_value_type(field):
            continue  # proto3 JSON: null means the default
        if _is_map(field):
            _check_map(item, field, field_path, violations)
        elif field.is_repeated:
            if not isinstance(item, list):
                violations.append((field_path, "must be a JSON array"))
                continue
            for index, element in enumerate(item):
                _check_value(element, field, f"{field_path}[{index}]", violations)
        else:
            _check_value(item, field, field_path, violations)


@functools.cache
def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


@functools.cache
def _is_value_type(field: FieldDescriptor) -> bool:
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name == "google.protobuf.Value"
    )


def _check_map(value: object, field: FieldDescriptor, path: str, violations: list) -> None:
    if not isinstance(value, dict):
        violations.append((path, "must be a JSON object"))
        return
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    for key, item in value.items():
        if key_field.type in _INT_RANGES and _as_int(key, key_field) is None:
            violations.append((path, "has a key that is not an integer"))
        elif key_field.type == FieldDescriptor.TYPE_BOOL and key not in ("true", "false"):
            violations.append((path, "has a key that is not true or false"))
        _check_value(item, value_field, f"{path}[{json.dumps(key)}]", violations)


def _check_value(value: object, field: FieldDescriptor, path: str, violations: list) -> None:
    problem = _scalar_problem(value, field) if field.type != FieldDescriptor.TYPE_MESSAGE else None
    if field.type in _INT_RANGES and isinstance(value, str):
        # proto3 JSON would take "2"; this API's integers are JSON numbers, in
        # bodies as in answers (a string is a wrong type: 400).
        problem = f"must be {_INT_RANGES[field.type][2]} (a JSON number, not a string)"
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        full_name = field.message_type.full_name
        if full_name in _WELL_KNOWN_FORMS:
            try:
                json_format.ParseDict(value, message_factory.GetMessageClass(field.message_type)())
            except (json_format.ParseError, ValueError, TypeError):
                problem = f"must be {_WELL_KNOWN_FORMS[full_name]}"
        elif value is None:
            problem = "must not be null"
        else:
            _check_object(value, field.message_type, path, violations)
    if problem:
        violations.append((path, problem))


def _scalar_problem(value: object, field: FieldDescriptor) -> str | None:
    kind = field.type
    if value is None:
        return "must not be null"
    if kind == FieldDescriptor.TYPE_STRING:
        return None if isinstance(value, str) else "must be a string"
    if kind == FieldDescriptor.TYPE_BOOL:
        return None if isinstance(value, bool) else "must be true or false"
    if kind == FieldDescriptor.TYPE_BYTES:
        if isinstance(value, str) and _decode_base64(value) is not None:
            return None
        return "must be base64 text"
    if kind == FieldDescriptor.TYPE_ENUM:
        names = [v.name for v in field.enum_type.values]
        if isinstance(value, str) and value in names:
            return None
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value in field.enum_type.values_by_number
        ):
            return None
        return "must be one of " + ", ".join(names)
    if kind in _INT_RANGES:
        low, high, wanted = _INT_RANGES[kind]
        number = _as_int(value, field)
        if number is None:
            return f"must be {wanted}"
        if not low <= number <= high:
            return f"must be {wanted} (between {low} and {high})"
        return None
    if kind in _FLOAT_TYPES:
        if isinstance(value, bool):
            return "must be a number"
        if isinstance(value, int | float):
            return None
        if isinstance(value, str) and (value in _FLOAT_WORDS or _is_float_text(value)):
            return None
        return "must be a number"
    return None


def _as_int(value: object, field: FieldDescriptor) -> int | None:
    """An integer from its proto3 JSON forms (number, integral float, decimal
    string), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,20}", value.strip()):
        return int(value)
    return None


def _is_float_text(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _decode_base64(text: str) -> bytes | None:
    """Standard or URL-safe base64, padded or not (both are proto3 JSON)."""
    padded = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


def _set_path_field(request: Message, field_path: str, text: str, binding: Binding) -> None:
    """Set a field bound by the path; a body that gave another value is an error."""
    *parents, name = field_path.split(".")
    target = request
    for parent in parents:
        target = getattr(target, parent)
    field = target.DESCRIPTOR.fields_by_name[name]
    value = _scalar_from_text(text, field, field_path)
    current = getattr(target, name)
    if binding.body == "*" and current != field.default_value and current != value:
        raise RequestError(
            f"{field_path} in the body must match the path, or be left out",
            [(field_path, "differs between the path and the body")],
        )
    setattr(target, name, value)


def _scalar_from_text(text: str, field: FieldDescriptor, field_path: str):
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return text
    if kind == FieldDescriptor.TYPE_BOOL:
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
        raise invalid([(field_path, "must be true or false")])
    if kind == FieldDescriptor.TYPE_ENUM:
        value = field.enum_type.values_by_name.get(text)
        if value is None:
            names = ", ".join(v.name for v in field.enum_type.values)
            raise invalid([(field_path, f"must be one of {names}")])
        return value.number
    if kind == FieldDescriptor.TYPE_BYTES:
        decoded = _decode_base64(text)
        if decoded is None:
            raise invalid([(field_path, "must be base64 text")])
        return decoded
    problem = _scalar_problem(text, field)
    if problem:
        raise invalid([(field_path, problem)])
    if kind in _INT_RANGES:
        return int(text)
    return float(text)


def _apply_query(request: Message, binding: Binding, query: list[tuple[str, str]]) -> None:
    """Query parameters fill the request fields that neither the path nor the
    body binds; anything else is an unknown parameter."""
    if binding.body == "*":
        names = sorted({key for key, _ in query})
        raise RequestError(
            "unknown query parameter "
            + ", ".join(names)
            + f": {binding.verb} {binding.template} takes its input from the body",
            [(name, "unknown query parameter") for name in names],
        )
    bound = {variable.field_path for variable in binding.variables} | (
        {binding.body} if binding.body else set()
    )
    grouped: dict[str, list[str]] = {}
    for key, value in query:
        grouped.setdefault(key, []).append(value)
    violations = []
    for key, values in grouped.items():
        field_path = _query_field_path(request.DESCRIPTOR, key)
        if field_path is None or field_path in bound or any(field_path.startswith(b + ".") for b in bound):
            violations.append((key, "unknown query parameter"))
            continue
        try:
            _set_query_field(request, field_path, values)
        except RequestError as error:
            violations.extend(error.violations)
    if violations:
        raise invalid(violations)


def _query_field_path(descriptor: Descriptor, key: str) -> str | None:
    """The field path a query key names ("a.b", json names too), if it names a
    scalar (or repeated scalar) field."""
    names = []
    for part in key.split("."):
        if descriptor is None:
            return None
        field = _json_fields(descriptor).get(part)
        if field is None or _is_map(field):
            return None
        names.append(field.name)
        descriptor = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
    if descriptor is not None:
        return None  # a whole message cannot come from one query value
    return ".".join(names)


def _set_query_field(request: Message, field_path: str, values: list[str]) -> None:
    *parents, name = field_path.split(".")
    target = request
    for parent in parents:
        target = getattr(target, parent)
    field = target.DESCRIPTOR.fields_by_name[name]
    converted = [_scalar_from_text(value, field, field_path) for value in values]
    if field.is_repeated:
        getattr(target, name).extend(converted)
    elif len(converted) > 1:
        raise invalid([(field_path, "given more than once")])
    else:
        setattr(target, name, converted[0])


# --- responses ---------------------------------------------------------------


def message_to_json(message: Message) -> dict:
    """A message as the API's JSON: snake_case names in the proto's field
    order, enum names, every field present (null for an unset message or
    optional), and 64-bit integers as numbers. json_format's shape, walked
    straight from the descriptor (json_format's generic walk cost more than
    the rest of a request's transcoding)."""
    return _renderer(message.DESCRIPTOR)(message)


@functools.cache
def _renderer(descriptor: Descriptor):
    fields = []
    for field in descriptor.fields:
        nullable = _prints_as_null(field)
        # A member of a real oneof is left out when unset.
        sparse = field.containing_oneof is not None and not nullable and not field.is_repeated
        fields.append((field.name, _field_renderer(field), nullable, sparse))

    def render(message: Message) -> dict:
        rendered = {}
        for name, render_value, nullable, sparse in fields:
            if (nullable or sparse) and not message.HasField(name):
                if nullable:
                    rendered[name] = None
                continue
            rendered[name] = render_value(getattr(message, name))
        return rendered

    return render


@functools.cache
def _prints_as_null(field: FieldDescriptor) -> bool:
    if field.is_repeated or not field.has_presence:
        return False
    oneof = field.containing_oneof
    # A proto3 `optional` sits alone in a synthetic oneof; real oneofs stay sparse.
    return oneof is None or (len(oneof.fields) == 1 and oneof.name == f"_{field.name}")


def _field_renderer(field: FieldDescriptor):
    if _is_map(field):
        key_field, value_field = (field.message_type.fields_by_name[n] for n in ("key", "value"))
        key_text = (lambda k: "true" if k else "false") if key_field.type == FieldDescriptor.TYPE_BOOL else str
        render_value = _value_renderer(value_field)
        return lambda entries: {key_text(k): render_value(v) for k, v in entries.items()}
    render_value = _value_renderer(field)
    if field.is_repeated:
        return lambda values: [render_value(v) for v in values]
    return render_value


_INT64_WRAPPERS = {"google.protobuf.Int64Value", "google.protobuf.UInt64Value"}


def _value_renderer(field: FieldDescriptor):
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        full_name = field.message_type.full_name
        if full_name == "google.protobuf.Timestamp":
            return lambda value: value.ToJsonString()
        if full_name in _INT64_WRAPPERS:
            return lambda value: value.value
        if full_name in _WELL_KNOWN_FORMS:
            return json_format.MessageToDict
        return _renderer(field.message_type)
    if kind == FieldDescriptor.TYPE_ENUM:
        names = {value.number: value.name for value in field.enum_type.values}
        return lambda number: names.get(number, number)
    if kind == FieldDescriptor.TYPE_BYTES:
        return lambda value: base64.b64encode(value).decode()
    if kind in _FLOAT_TYPES:
        return _float_json
    return _as_is


def _as_is(value):
    return value


def _float_json(value: float):
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def response_json(binding: Binding, response: Message) -> object:
    if binding.response_body and binding.response_body != "*":
        field = response.DESCRIPTOR.fields_by_name[binding.response_body]
        return _field_renderer(field)(getattr(response, binding.response_body))
    return message_to_json(response)


def location_for(binding: Binding, response: Message) -> str | None:
    """The Location of a created resource, from the option's template and the
    response's fields ("/orders/{id}" -> "/orders/3f2a...")."""
    template = binding.options.location
    if not template:
        return None

    def fill(match: re.Match) -> str:
        value = response
        for name in match.group(1).split("."):
            value = getattr(value, name)
        return urllib.parse.quote(str(value), safe="")

    return _VARIABLE.sub(fill, template)
