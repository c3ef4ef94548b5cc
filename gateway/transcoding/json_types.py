"""How each protobuf type looks in the API's JSON: the ranges of the integer
types, the JSON Schema of every scalar, and the well-known types that have a
JSON form of their own. One table, read by the request binding, the response
rendering and the OpenAPI generator (gateway/openapi.py)."""

import functools
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor


@dataclass(frozen=True)
class IntegerType:
    low: int
    high: int
    # What a violation says the value must be.
    wanted: str


_INT32 = IntegerType(-(2**31), 2**31 - 1, "a 32-bit integer")
_UINT32 = IntegerType(0, 2**32 - 1, "an unsigned 32-bit integer")
_INT64 = IntegerType(-(2**63), 2**63 - 1, "a 64-bit integer")
_UINT64 = IntegerType(0, 2**64 - 1, "an unsigned 64-bit integer")

INTEGER_TYPES = {
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
}
FLOAT_TYPES = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})
# proto3 JSON's words for the floats JSON has no number for.
FLOAT_WORDS = frozenset({"NaN", "Infinity", "-Infinity"})

_INT32_SCHEMA = {"type": "integer", "format": "int32"}
# The gateway renders 64-bit integers as JSON numbers, not proto3's strings;
# unsigned 32-bit ones do not fit int32.
_INT64_SCHEMA = {"type": "integer", "format": "int64"}
_UNSIGNED_SCHEMA = {"type": "integer", "format": "int64", "minimum": 0}
SCALAR_SCHEMAS = {
    FieldDescriptor.TYPE_INT32: _INT32_SCHEMA,
    FieldDescriptor.TYPE_SINT32: _INT32_SCHEMA,
    FieldDescriptor.TYPE_SFIXED32: _INT32_SCHEMA,
    FieldDescriptor.TYPE_UINT32: _UNSIGNED_SCHEMA,
    FieldDescriptor.TYPE_FIXED32: _UNSIGNED_SCHEMA,
    FieldDescriptor.TYPE_INT64: _INT64_SCHEMA,
    FieldDescriptor.TYPE_SINT64: _INT64_SCHEMA,
    FieldDescriptor.TYPE_SFIXED64: _INT64_SCHEMA,
    FieldDescriptor.TYPE_UINT64: _UNSIGNED_SCHEMA,
    FieldDescriptor.TYPE_FIXED64: _UNSIGNED_SCHEMA,
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}


@dataclass(frozen=True)
class WellKnownType:
    # What a violation says a value must be.
    wanted: str
    schema: dict


# Well-known types with a JSON form of their own (a Timestamp is a string,
# an Int64Value a bare number...).
WELL_KNOWN_TYPES = {
    "google.protobuf.Timestamp": WellKnownType(
        "an RFC 3339 timestamp such as 2026-11-21T10:00:00Z", {"type": "string", "format": "date-time"}
    ),
    "google.protobuf.Duration": WellKnownType(
        "a duration such as 1.5s", {"type": "string", "example": "1.5s"}
    ),
    "google.protobuf.FieldMask": WellKnownType("a comma-separated list of field paths", {"type": "string"}),
    "google.protobuf.Struct": WellKnownType(
        "a JSON object", {"type": "object", "additionalProperties": True}
    ),
    "google.protobuf.Value": WellKnownType("any JSON value", {}),
    "google.protobuf.ListValue": WellKnownType("a JSON array", {"type": "array", "items": {}}),
    "google.protobuf.Any": WellKnownType(
        "an object with @type", {"type": "object", "additionalProperties": True}
    ),
    "google.protobuf.Empty": WellKnownType("an empty object", {"type": "object"}),
    "google.protobuf.DoubleValue": WellKnownType("a number", {"type": "number"}),
    "google.protobuf.FloatValue": WellKnownType("a number", {"type": "number"}),
    "google.protobuf.Int64Value": WellKnownType("an integer", _INT64_SCHEMA),
    "google.protobuf.UInt64Value": WellKnownType("an unsigned integer", _UNSIGNED_SCHEMA),
    "google.protobuf.Int32Value": WellKnownType("an integer", _INT32_SCHEMA),
    "google.protobuf.UInt32Value": WellKnownType("an unsigned integer", _UNSIGNED_SCHEMA),
    "google.protobuf.BoolValue": WellKnownType("true or false", {"type": "boolean"}),
    "google.protobuf.StringValue": WellKnownType("a string", {"type": "string"}),
    "google.protobuf.BytesValue": WellKnownType("base64 text", {"type": "string", "format": "byte"}),
}


# The descriptor questions below are asked for every field of every request
# and answer; each is answered once per descriptor (cached, never mutated).


@functools.cache
def is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


@functools.cache
def well_known(field: FieldDescriptor) -> WellKnownType | None:
    """The well-known type of a message field, if it has a JSON form of its own."""
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return None
    return WELL_KNOWN_TYPES.get(field.message_type.full_name)
