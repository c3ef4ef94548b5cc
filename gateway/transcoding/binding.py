"""Request binding: the request message of a route from its path, query and
JSON body, as grpc-gateway binds them, checked against the field rules the
protos declare (plumbing/field_rules.py) before anything is called.

The JSON is checked against the descriptor first, so that every error names
the field and none echoes a value back (a value may be a card number); then
it is converted straight into the message, without json_format's generic walk.
"""

import base64
import binascii
import functools
import json
import math
import re

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.transcoding.json_types import FLOAT_TYPES, FLOAT_WORDS, INTEGER_TYPES, is_map, well_known
from gateway.transcoding.routes import Binding
from plumbing import field_rules
from plumbing.errors import violations_message


class RequestError(Exception):
    """A request the gateway refuses before calling anything (HTTP 400)."""

    def __init__(self, message: str | None = None, violations: list[tuple[str, str]] = ()):
        self.violations = list(violations)
        self.message = message or violations_message(self.violations)
        super().__init__(self.message)


def invalid(violations: list[tuple[str, str]]) -> RequestError:
    return RequestError(violations=violations)


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
    violations = field_rules.violations_of(request)
    if violations:
        raise invalid(violations)
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
        if is_map(field) or well_known(field) is not None:
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
    if kind in INTEGER_TYPES:
        return _as_int(value, field)
    if kind in FLOAT_TYPES:
        return float(value)
    if kind == FieldDescriptor.TYPE_BYTES:
        return _decode_base64(value)
    return value


@functools.cache
def _json_fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    # Asked for every object of every request: once per descriptor.
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
        if is_map(field):
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
        if key_field.type in INTEGER_TYPES and _as_int(key, key_field) is None:
            violations.append((path, "has a key that is not an integer"))
        elif key_field.type == FieldDescriptor.TYPE_BOOL and key not in ("true", "false"):
            violations.append((path, "has a key that is not true or false"))
        _check_value(item, value_field, f"{path}[{json.dumps(key)}]", violations)


def _check_value(value: object, field: FieldDescriptor, path: str, violations: list) -> None:
    problem = _scalar_problem(value, field) if field.type != FieldDescriptor.TYPE_MESSAGE else None
    if field.type in INTEGER_TYPES and isinstance(value, str):
        # proto3 JSON would take "2"; this API's integers are JSON numbers, in
        # bodies as in answers (a string is a wrong type: 400).
        problem = f"must be {INTEGER_TYPES[field.type].wanted} (a JSON number, not a string)"
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        form = well_known(field)
        if form is not None:
            # Checked by parsing it alone: these types have JSON forms of their own.
            try:
                json_format.ParseDict(value, message_factory.GetMessageClass(field.message_type)())
            except (json_format.ParseError, ValueError, TypeError):
                problem = f"must be {form.wanted}"
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
    if kind in INTEGER_TYPES:
        integer = INTEGER_TYPES[kind]
        number = _as_int(value, field)
        if number is None:
            return f"must be {integer.wanted}"
        if not integer.low <= number <= integer.high:
            return f"must be {integer.wanted} (between {integer.low} and {integer.high})"
        return None
    if kind in FLOAT_TYPES:
        if isinstance(value, bool):
            return "must be a number"
        if isinstance(value, int | float):
            return None
        if isinstance(value, str) and (value in FLOAT_WORDS or _is_float_text(value)):
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
    if kind in INTEGER_TYPES:
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
    # Field paths set so far, and the key each came as: a field given under
    # both its names (page_size and pageSize) is refused, as in a body.
    spelled: dict[str, str] = {}
    for key, values in grouped.items():
        field_path = _query_field_path(request.DESCRIPTOR, key)
        if field_path is None or field_path in bound or any(field_path.startswith(b + ".") for b in bound):
            violations.append((key, "unknown query parameter"))
            continue
        if field_path in spelled:
            violations.append((key, f"given twice (as {spelled[field_path]} and {key})"))
            continue
        spelled[field_path] = key
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
        if field is None or is_map(field):
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
