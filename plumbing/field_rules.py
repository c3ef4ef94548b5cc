"""The field rules declared in the protos (shop.api.v1.rules on a field, and
shop.api.v1.message_rules on a request with alternative forms; see
protos/shop/api/v1/field_rules.proto), as plain-Python checks.

The checks of a message type are built once, from its descriptor: at start
for the requests of the services a process serves or calls
(prepare_service), so checking a request then only walks the fields that
carry rules. Every service runs them in its server interceptor, after the
caller check (plumbing/interceptors.py), and the gateway when it binds a
request (gateway/transcoding/binding.py). A violation names the field and the
rule, never the value (a value may be a card number).

Patterns are always matched whole (fullmatch): re.match's `$` also matches
before a trailing newline, so "USD\\n" would pass `^[A-Z]{3}$`.
"""

import functools
import re
from collections.abc import Callable

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from plumbing.errors import invalid_argument
from shop.api.v1 import field_rules_pb2

# (field path, description) pairs, as BadRequest field violations.
Violations = list[tuple[str, str]]
# Checks one value found at `path`, adding what it breaks to the list.
_ValueCheck = Callable[[object, str, Violations], None]


def declared_rules(field: FieldDescriptor) -> field_rules_pb2.FieldRules | None:
    """The rules declared on a field, or None."""
    options = field.GetOptions()
    if not options.HasExtension(field_rules_pb2.rules):
        return None
    return options.Extensions[field_rules_pb2.rules]


@functools.cache
def format_rule(fmt: int) -> field_rules_pb2.FormatRule:
    """What a Format asks of a string, from the option on its enum value."""
    value = field_rules_pb2.Format.DESCRIPTOR.values_by_number[fmt]
    return value.GetOptions().Extensions[field_rules_pb2.format_rule]


def prepare_service(full_name: str) -> None:
    """Build the checks of every request of a service, before it serves."""
    try:
        service = descriptor_pool.Default().FindServiceByName(full_name)
    except KeyError:
        return  # not one of the shop's protos: it declares no rules
    for method in service.methods:
        _message_check(method.input_type)


def violations_of(message: Message) -> Violations:
    """Every declared rule `message` breaks, as (field path, description)."""
    violations: Violations = []
    check = _message_check(message.DESCRIPTOR)
    if check is not None:
        check(message, "", violations)
    return violations


def check_request(message: Message) -> None:
    """Raise INVALID_ARGUMENT, one field violation per broken rule, if
    `message` breaks any."""
    violations = violations_of(message)
    if violations:
        raise invalid_argument(violations)


def request_check(full_method: str) -> Callable[[Message], None] | None:
    """The check of the request of '/package.Service/Method', or None when
    its request type declares no rule (health, reflection, ...)."""
    service, _, method = full_method.lstrip("/").partition("/")
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(f"{service}.{method}")
    except KeyError:
        return None
    return check_request if _message_check(descriptor.input_type) is not None else None


_being_built: set[str] = set()


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


@functools.cache
def _message_check(descriptor: Descriptor):
    """The check of one message type (None: nothing in it has a rule)."""
    if descriptor.full_name in _being_built:
        return None  # a type inside itself (google.protobuf.Value): its rules are being built already
    _being_built.add(descriptor.full_name)
    try:
        checks = [check for field in descriptor.fields if (check := _field_check(field)) is not None]
    finally:
        _being_built.discard(descriptor.full_name)
    forms = declared_forms(descriptor)
    if forms:
        checks.append(_forms_check(descriptor, forms))
    if not checks:
        return None

    def check_message(message: Message, path: str, violations: Violations) -> None:
        for check in checks:
            check(message, path, violations)

    return check_message


def declared_forms(descriptor: Descriptor) -> list[tuple[str, ...]]:
    """The alternative forms a message declares: groups of field names."""
    options = descriptor.GetOptions()
    if not options.HasExtension(field_rules_pb2.message_rules):
        return []
    return [tuple(group.fields) for group in options.Extensions[field_rules_pb2.message_rules].forms]


def _forms_check(descriptor: Descriptor, forms: list[tuple[str, ...]]):
    fields = {name: descriptor.fields_by_name[name] for form in forms for name in form}
    named = " or ".join(" and ".join(form) for form in forms)
    only_one = "not both" if len(forms) == 2 else "only one of them"

    def given(message: Message, name: str) -> bool:
        field = fields[name]
        if field.is_repeated:
            return len(getattr(message, name)) > 0
        if field.has_presence:
            return message.HasField(name)
        return bool(getattr(message, name))

    def check_forms(message: Message, path: str, violations: Violations) -> None:
        chosen = [form for form in forms if any(given(message, name) for name in form)]
        if len(chosen) > 1:
            violations.append((_join(path, forms[0][0]), f"give either {named}, {only_one}"))
        elif not chosen:
            violations.append((_join(path, forms[0][0]), f"give {named}"))
        else:
            form = chosen[0]
            present = " and ".join(name for name in form if given(message, name))
            for name in form:
                if not given(message, name):
                    violations.append((_join(path, name), f"is required with {present}"))

    return check_forms


def _field_check(field: FieldDescriptor):
    rules = declared_rules(field)
    nested = None
    if field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
        nested = _message_check(field.message_type)
    if rules is None and nested is None:
        return None
    rules = rules or field_rules_pb2.FieldRules()
    name = field.name
    value_check = _value_check(field, rules, nested)
    if field.is_repeated:
        return _repeated_check(name, rules, value_check)
    presence = field.has_presence

    def check_field(message: Message, path: str, violations: Violations) -> None:
        if presence:
            if not message.HasField(name):
                if rules.required:
                    violations.append((_join(path, name), "is required"))
                return
            value = getattr(message, name)
        else:
            value = getattr(message, name)
            if not value:
                if rules.required:
                    violations.append((_join(path, name), _required_description(field)))
                    return
                if rules.ignore_empty:
                    return
        if value_check is not None:
            value_check(value, _join(path, name), violations)

    return check_field


def _required_description(field: FieldDescriptor) -> str:
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return "must be true"
    if field.cpp_type in (FieldDescriptor.CPPTYPE_STRING, FieldDescriptor.CPPTYPE_ENUM):
        return "is required"
    return "must not be 0"


def _repeated_check(name: str, rules: field_rules_pb2.FieldRules, value_check: _ValueCheck | None):
    low = rules.min_items if rules.HasField("min_items") else None
    high = rules.max_items if rules.HasField("max_items") else None

    def check_items(message: Message, path: str, violations: Violations) -> None:
        values = getattr(message, name)
        count = len(values)
        if not count and (rules.required or rules.ignore_empty):
            if rules.required:
                violations.append((_join(path, name), "at least one item is required"))
            return
        if low is not None and count < low:
            wanted = "one item is" if low == 1 else f"{low} items are"
            violations.append((_join(path, name), f"at least {wanted} required"))
        if high is not None and count > high:
            violations.append((_join(path, name), f"at most {high} items"))
        if value_check is not None:
            field_path = _join(path, name)
            # Past the limit, the items themselves are not looked at.
            for index, value in enumerate(values[:high] if high is not None else values):
                value_check(value, f"{field_path}[{index}]", violations)

    return check_items


def _value_check(field: FieldDescriptor, rules: field_rules_pb2.FieldRules, nested) -> _ValueCheck | None:
    """The check of one value of `field` (an item, for a repeated field)."""
    if nested is not None:
        return nested
    checks: list[_ValueCheck] = []
    if rules.format:
        checks.append(_format_check(format_rule(rules.format)))
    if rules.HasField("max_length"):
        checks.append(_max_length_check(rules.max_length))
    if rules.HasField("min") or rules.HasField("max"):
        checks.append(_range_check(rules))
    if rules.defined_only and field.type == FieldDescriptor.TYPE_ENUM:
        checks.append(_defined_enum_check(field.enum_type))
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]

    def check_value(value, path: str, violations: Violations) -> None:
        for check in checks:
            check(value, path, violations)

    return check_value


def _format_check(rule: field_rules_pb2.FormatRule) -> _ValueCheck:
    pattern = re.compile(rule.pattern)
    refused = frozenset(rule.not_in)
    refused_description = "must not be " + " or ".join(sorted(refused))

    def check_format(value: str, path: str, violations: Violations) -> None:
        if pattern.fullmatch(value) is None:
            violations.append((path, rule.description))
        elif value in refused:
            violations.append((path, refused_description))

    return check_format


def _max_length_check(limit: int) -> _ValueCheck:
    def check_length(value: str, path: str, violations: Violations) -> None:
        if len(value) > limit:
            violations.append((path, f"must be at most {limit} characters"))

    return check_length


def _range_description(rules: field_rules_pb2.FieldRules) -> str:
    if rules.HasField("min") and rules.HasField("max"):
        return f"must be between {rules.min} and {rules.max}"
    if rules.HasField("min"):
        return f"must be at least {rules.min}"
    return f"must be at most {rules.max}"


def _range_check(rules: field_rules_pb2.FieldRules) -> _ValueCheck:
    low = rules.min if rules.HasField("min") else None
    high = rules.max if rules.HasField("max") else None
    description = _range_description(rules)

    def check_range(value: int, path: str, violations: Violations) -> None:
        if (low is not None and value < low) or (high is not None and value > high):
            violations.append((path, description))

    return check_range


def _defined_enum_check(enum: EnumDescriptor) -> _ValueCheck:
    defined = frozenset(value.number for value in enum.values if value.number)
    description = "must be one of " + ", ".join(value.name for value in enum.values if value.number)

    def check_enum(value: int, path: str, violations: Violations) -> None:
        if value not in defined:
            violations.append((path, description))

    return check_enum
