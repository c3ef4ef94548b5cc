"""JSON Schema of the protos' messages and fields for /openapi.json, with the
field rules they declare (protos/shop/api/v1/field_rules.proto): a format's
pattern and refused words, minimum/maximum, maxLength, minItems/maxItems,
enum membership, which fields a request must carry, and its alternative
forms (oneOf). The gateway
(gateway/openapi.py) documents operations; this says what each value may be,
from the same declarations the services and the gateway enforce
(plumbing/field_rules.py)."""

import re

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.transcoding.json_types import SCALAR_SCHEMAS, WELL_KNOWN_TYPES
from plumbing.field_rules import declared_forms, declared_rules, format_rule
from shop.api.v1 import field_rules_pb2

REF = "#/components/schemas/"


class MessageSchemas:
    """The schemas of messages, collected as components while a document is built."""

    def __init__(self) -> None:
        self.components: dict[str, dict] = {}

    def ref(self, descriptor: Descriptor) -> dict:
        if descriptor.full_name in WELL_KNOWN_TYPES:
            return dict(WELL_KNOWN_TYPES[descriptor.full_name].schema)
        name = descriptor.full_name
        if name not in self.components:
            self.components[name] = {}  # placeholder first: messages may nest themselves
            self.components[name] = self.message(descriptor)
        return {"$ref": REF + name}

    def message(self, descriptor: Descriptor, leave_out: set[str] = frozenset()) -> dict:
        fields = [field for field in descriptor.fields if field.name not in leave_out]
        schema = {
            "type": "object",
            "properties": {field.name: self.field(field) for field in fields},
            "additionalProperties": False,
        }
        required = [field.name for field in fields if must_be_given(field)]
        if required:
            schema["required"] = required
        forms = declared_forms(descriptor)
        if forms:
            # Exactly one form is given: each of its fields present and not its
            # zero value, and no field of another form but as its zero value.
            schema["oneOf"] = [
                {
                    "required": list(form),
                    "properties": {
                        **{
                            name: _not_given(descriptor.fields_by_name[name])
                            for other in forms
                            if other != form
                            for name in other
                        },
                        **{name: _given(descriptor.fields_by_name[name]) for name in form},
                    },
                }
                for form in forms
            ]
        return schema

    def field(self, field: FieldDescriptor) -> dict:
        """A field's schema as a property of its message."""
        rules = declared_rules(field) or field_rules_pb2.FieldRules()
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        if field.is_repeated:
            return self._list(field, rules)
        schema = self._value(field, rules)
        if field.has_presence and not rules.required:
            # Rendered as null when unset, so every response has one shape.
            return {"allOf": [schema], "nullable": True} if "$ref" in schema else {**schema, "nullable": True}
        return schema

    def parameter(self, field: FieldDescriptor) -> dict:
        """A field's schema as a path or query parameter."""
        rules = declared_rules(field) or field_rules_pb2.FieldRules()
        return self._list(field, rules) if field.is_repeated else self._value(field, rules)

    def single(self, field: FieldDescriptor) -> dict:
        """One value of a field, without its rules."""
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return self.ref(field.message_type)
        if field.type == FieldDescriptor.TYPE_ENUM:
            return {"type": "string", "enum": [value.name for value in field.enum_type.values]}
        return dict(SCALAR_SCHEMAS[field.type])

    def _list(self, field: FieldDescriptor, rules: field_rules_pb2.FieldRules) -> dict:
        schema = {"type": "array", "items": {**self.single(field), **_value_rules(field, rules)}}
        low = rules.min_items if rules.HasField("min_items") else (1 if rules.required else None)
        if low:
            schema["minItems"] = low
        if rules.HasField("max_items"):
            schema["maxItems"] = rules.max_items
        if rules.ignore_empty and low:
            return {"anyOf": [{"type": "array", "maxItems": 0}, schema]}
        return schema

    def _value(self, field: FieldDescriptor, rules: field_rules_pb2.FieldRules) -> dict:
        schema = self.single(field)
        constraints = _value_rules(field, rules)
        if rules.required and not field.has_presence:
            if field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
                constraints.setdefault("minLength", 1)
            elif field.type not in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_ENUM):
                constraints["not"] = {"enum": [_zero(field)]}
        if rules.ignore_empty and constraints and _zero_breaks(field, rules):
            # The zero value means "not given" and is taken as such.
            return {**schema, "anyOf": [{"enum": [_zero(field)]}, constraints]}
        return {**schema, **constraints}


def must_be_given(field: FieldDescriptor) -> bool:
    """Whether a request must carry the field: it is required, or its zero
    value (what leaving it out means) breaks its rules."""
    rules = declared_rules(field)
    if rules is None:
        return False
    if rules.required:
        return True
    return (
        not field.has_presence
        and not field.is_repeated
        and not rules.ignore_empty
        and _zero_breaks(field, rules)
    )


def _value_rules(field: FieldDescriptor, rules: field_rules_pb2.FieldRules) -> dict:
    """The JSON Schema keywords of the rules on one value."""
    schema: dict = {}
    if rules.format:
        fmt = format_rule(rules.format)
        schema["pattern"] = fmt.pattern
        if fmt.not_in:
            schema["not"] = {"enum": list(fmt.not_in)}
    if rules.HasField("max_length"):
        schema["maxLength"] = rules.max_length
    if rules.HasField("min"):
        schema["minimum"] = rules.min
    if rules.HasField("max"):
        schema["maximum"] = rules.max
    if rules.defined_only and field.type == FieldDescriptor.TYPE_ENUM:
        schema["enum"] = [value.name for value in field.enum_type.values if value.number]
    return schema


def _given(field: FieldDescriptor) -> dict:
    """What a value must be to count as given: not the field's zero value,
    nor null (proto3 JSON's null means the zero value too)."""
    if field.is_repeated:
        return {"type": "array", "minItems": 1}
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return {"type": "object"}
    return {"not": {"enum": [_zero(field), None]}}


def _not_given(field: FieldDescriptor) -> dict:
    """What a value must be to count as not given: the zero value or null."""
    if field.is_repeated:
        return {"anyOf": [{"type": "array", "maxItems": 0}, {"enum": [None]}]}
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return {"enum": [None]}
    return {"enum": [_zero(field), None]}


def _zero(field: FieldDescriptor):
    if field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        return ""
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return False
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[0].name
    return 0


def _zero_breaks(field: FieldDescriptor, rules: field_rules_pb2.FieldRules) -> bool:
    """Whether the zero value breaks a rule other than `required`."""
    if rules.format and re.fullmatch(format_rule(rules.format).pattern, "") is None:
        return True
    if rules.HasField("min") and rules.min > 0:
        return True
    if rules.HasField("max") and rules.max < 0:
        return True
    return bool(rules.defined_only)
