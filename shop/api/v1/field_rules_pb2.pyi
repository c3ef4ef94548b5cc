from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Format(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FORMAT_UNSPECIFIED: _ClassVar[Format]
    ID: _ClassVar[Format]
    PRODUCT_ID: _ClassVar[Format]
    CURRENCY: _ClassVar[Format]
    PAYMENT_METHOD: _ClassVar[Format]
    TEXT: _ClassVar[Format]
    CARD_NUMBER: _ClassVar[Format]
    CVC: _ClassVar[Format]
FORMAT_UNSPECIFIED: Format
ID: Format
PRODUCT_ID: Format
CURRENCY: Format
PAYMENT_METHOD: Format
TEXT: Format
CARD_NUMBER: Format
CVC: Format
RULES_FIELD_NUMBER: _ClassVar[int]
rules: _descriptor.FieldDescriptor
FORMAT_RULE_FIELD_NUMBER: _ClassVar[int]
format_rule: _descriptor.FieldDescriptor
MESSAGE_RULES_FIELD_NUMBER: _ClassVar[int]
message_rules: _descriptor.FieldDescriptor

class FieldRules(_message.Message):
    __slots__ = ("required", "ignore_empty", "format", "max_length", "min", "max", "min_items", "max_items", "defined_only")
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EMPTY_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    MIN_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    DEFINED_ONLY_FIELD_NUMBER: _ClassVar[int]
    required: bool
    ignore_empty: bool
    format: Format
    max_length: int
    min: int
    max: int
    min_items: int
    max_items: int
    defined_only: bool
    def __init__(self, required: _Optional[bool] = ..., ignore_empty: _Optional[bool] = ..., format: _Optional[_Union[Format, str]] = ..., max_length: _Optional[int] = ..., min: _Optional[int] = ..., max: _Optional[int] = ..., min_items: _Optional[int] = ..., max_items: _Optional[int] = ..., defined_only: _Optional[bool] = ...) -> None: ...

class MessageRules(_message.Message):
    __slots__ = ("forms",)
    FORMS_FIELD_NUMBER: _ClassVar[int]
    forms: _containers.RepeatedCompositeFieldContainer[FieldGroup]
    def __init__(self, forms: _Optional[_Iterable[_Union[FieldGroup, _Mapping]]] = ...) -> None: ...

class FieldGroup(_message.Message):
    __slots__ = ("fields",)
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, fields: _Optional[_Iterable[str]] = ...) -> None: ...

class FormatRule(_message.Message):
    __slots__ = ("pattern", "description", "not_in")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    NOT_IN_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    description: str
    not_in: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pattern: _Optional[str] = ..., description: _Optional[str] = ..., not_in: _Optional[_Iterable[str]] = ...) -> None: ...
