"""Response rendering: a response message as the API's JSON, walked straight
from its descriptor (one renderer per message type, built once), and the
Location of a created resource."""

import base64
import functools
import math
import re
import urllib.parse

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.transcoding.json_types import FLOAT_TYPES, is_map, well_known
from gateway.transcoding.routes import VARIABLE, Binding


def message_to_json(message: Message) -> dict:
    """A message as the API's JSON: snake_case names in the proto's field
    order, enum names, every field present (null for an unset message or
    optional), and 64-bit integers as numbers. json_format's shape, walked
    straight from the descriptor (json_format's generic walk cost more than
    the rest of a request's transcoding)."""
    return _renderer(message.DESCRIPTOR)(message)


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

    return VARIABLE.sub(fill, template)


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
    if is_map(field):
        key_field, value_field = (field.message_type.fields_by_name[n] for n in ("key", "value"))
        key_text = (
            (lambda k: "true" if k else "false") if key_field.type == FieldDescriptor.TYPE_BOOL else str
        )
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
        if well_known(field) is not None:
            return json_format.MessageToDict
        return _renderer(field.message_type)
    if kind == FieldDescriptor.TYPE_ENUM:
        names = {value.number: value.name for value in field.enum_type.values}
        return lambda number: names.get(number, number)
    if kind == FieldDescriptor.TYPE_BYTES:
        return lambda value: base64.b64encode(value).decode()
    if kind in FLOAT_TYPES:
        return _float_json
    return _as_is


def _as_is(value):
    return value


def _float_json(value: float):
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
