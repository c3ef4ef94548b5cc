"""The route table, from the descriptors: each public RPC's google.api.http
rule (and its additional_bindings) becomes a Binding, with the
shop.api.v1.http options the HTTP rule cannot say (201 and Location, admin,
refused body fields). RPCs without a rule stay internal.

A path variable whose field refuses some words (a product id is never
"check") does not match them, so a path such as /inventory/check belongs to
its own route alone: another method there answers 405 with Allow, as on any
route, instead of reading a product named "check"."""

import functools
import re
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from werkzeug.routing import BaseConverter

from plumbing.field_rules import declared_rules, format_rule
from shop.api.v1 import http_options_pb2


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
# A path template's variable: "{order_id}", "{name=shelves/*}".
VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:=([^}]*))?\}")


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
        field = field_at(method.input_type, field_path)  # fails loudly on a typo in the proto
        rule_name = field_path.replace(".", "__")
        variables.append(PathVariable(rule_name, field_path))
        # "{name}" and "{name=*}" bind one segment; anything longer may span several.
        if segments not in (None, "*"):
            return f"<path:{rule_name}>"
        words = _refused_words(field)
        if words:
            return f"<{NOT_IN_CONVERTER}({', '.join(map(repr, words))}):{rule_name}>"
        return f"<{rule_name}>"

    flask_rule = VARIABLE.sub(to_rule_variable, template)
    if rule.body not in ("", "*"):
        field_at(method.input_type, rule.body)
    return Binding(
        backend=backend,
        method=method,
        endpoint=endpoint,
        verb=verb,
        template=VARIABLE.sub(lambda m: "{" + m.group(1) + "}", template),
        rule=flask_rule,
        variables=tuple(variables),
        body=rule.body,
        response_body=rule.response_body,
        options=options,
    )


def _refused_words(field: FieldDescriptor) -> tuple[str, ...]:
    rules = declared_rules(field)
    if rules is None or not rules.format:
        return ()
    return tuple(format_rule(rules.format).not_in)


# The name Flask rules use for NotInConverter (app.url_map.converters).
NOT_IN_CONVERTER = "not_in"


class NotInConverter(BaseConverter):
    """One path segment, but none of the given words."""

    def __init__(self, url_map, *words: str):
        super().__init__(url_map)
        self.regex = "(?!(?:" + "|".join(re.escape(word) for word in words) + ")$)[^/]+"


def field_at(descriptor: Descriptor, field_path: str) -> FieldDescriptor:
    """The field a path names in a request ("a.b"), or ValueError."""
    field = None
    for name in field_path.split("."):
        if descriptor is None:
            raise ValueError(f"{field_path}: {name} is not inside a message")
        field = descriptor.fields_by_name.get(name)
        if field is None:
            raise ValueError(f"{descriptor.full_name} has no field {name!r}")
        descriptor = field.message_type
    return field

