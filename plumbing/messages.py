"""Domain values to proto messages, and proto enums as the domain's.

A message: each field the message declares is
copied from the dataclass field of the same name, so a servicer writes out
only the fields that need converting (enum names to numbers, datetimes to
Timestamps). The proto is the contract: a domain field it does not declare
(an owner's id, say) is never copied."""

import dataclasses
import enum
import functools


def to_message(message_type, value, **converted):
    """A `message_type` with every field `value` has under the same name,
    `converted` giving those that need more than a copy."""
    copied = {name: getattr(value, name) for name in _shared_fields(message_type, type(value)) if name not in converted}
    return message_type(**copied, **converted)


@functools.cache
def _shared_fields(message_type, value_type) -> tuple[str, ...]:
    declared = message_type.DESCRIPTOR.fields_by_name
    return tuple(field.name for field in dataclasses.fields(value_type) if field.name in declared)


def names_of(proto_enum, name: str) -> type[enum.StrEnum]:
    """A proto enum's values as a StrEnum of their names, as they are stored
    and logged: all but its zero value (..._UNSPECIFIED, never set)."""
    return enum.StrEnum(name, [(n, n) for n, number in proto_enum.items() if number != 0])
