"""Fill in the reference parts of docs/api.md from the protos and from the
gateway's /openapi.json document, so they cannot drift from what runs.

docs/api.md is prose written by hand around blocks this script writes, each
between `<!-- generated:NAME -->` and `<!-- end generated:NAME -->`:

  rest-routes     every REST route (from openapi_document, as /openapi.json serves it)
  grpc-codes      the HTTP status of each gRPC code (the gateway's own table)
  grpc-services   every RPC of the three services (from the descriptors)
  messages        every message and enum, with the protos' comments

Usage: python -m scripts.gen_api_docs   (rewrites docs/api.md in place)
tests/test_docs.py fails when the committed file is not what this writes.
"""

import os
import pathlib
import re
import sys
import tempfile
from unittest import mock

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from grpc_tools import protoc

from gateway.auth import Gatekeeper
from gateway.config import GatewayConfig
from gateway.errors import HTTP_STATUS_BY_CODE
from gateway.openapi import openapi_document
from gateway.openapi_operations import resolved
from gateway.operations import OPERATIONS_ROUTES
from gateway.transcoding import route_table
from gateway.upstreams import SERVICES
from scripts.gen_protos import protoc_args

ROOT = pathlib.Path(__file__).resolve().parent.parent
API_DOC = ROOT / "docs" / "api.md"
BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n).*?(<!-- end generated:(?P=name) -->)", re.S)

_SCALAR_NAMES = {
    getattr(FieldDescriptor, name): name.removeprefix("TYPE_").lower()
    for name in dir(FieldDescriptor)
    if name.startswith("TYPE_") and name not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
}
_WELL_KNOWN = {"google.protobuf.Timestamp": "Timestamp (RFC 3339 UTC in JSON)"}


# --- the protos' comments ------------------------------------------------------


def proto_comments() -> dict[str, str]:
    """Full name (of a service, method, message, field, enum or enum value)
    -> its leading comment in protos/, joined into one paragraph."""
    with tempfile.TemporaryDirectory() as scratch:
        descriptor_set = pathlib.Path(scratch) / "shop.pb"
        args = protoc_args([f"--descriptor_set_out={descriptor_set}", "--include_source_info"])
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    comments: dict[str, str] = {}
    for file in files:
        names = _names_by_path(file)
        for location in file.source_code_info.location:
            text = " ".join(line.strip() for line in location.leading_comments.strip().splitlines())
            name = names.get(tuple(location.path))
            if text and name:
                comments[name] = text
    return comments


def _names_by_path(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple, str]:
    """Source-info paths -> full names (descriptor.proto's field numbers:
    message_type 4, enum_type 5, service 6; field 2, nested_type 3,
    enum value 2, method 2)."""
    names: dict[tuple, str] = {}

    def message(path: tuple, proto, prefix: str) -> None:
        full = f"{prefix}.{proto.name}"
        names[path] = full
        for i, field in enumerate(proto.field):
            names[(*path, 2, i)] = f"{full}.{field.name}"
        for i, nested in enumerate(proto.nested_type):
            message((*path, 3, i), nested, full)
        for i, enum in enumerate(proto.enum_type):
            enumeration((*path, 4, i), enum, full)

    def enumeration(path: tuple, proto, prefix: str) -> None:
        names[path] = f"{prefix}.{proto.name}"
        for i, value in enumerate(proto.value):
            names[(*path, 2, i)] = f"{prefix}.{proto.name}.{value.name}"

    for i, proto in enumerate(file.message_type):
        message((4, i), proto, file.package)
    for i, proto in enumerate(file.enum_type):
        enumeration((5, i), proto, file.package)
    for i, service in enumerate(file.service):
        full = f"{file.package}.{service.name}"
        names[(6, i)] = full
        for j, method in enumerate(service.method):
            names[(6, i, 2, j)] = f"{full}.{method.name}"
    return names


# --- the blocks ----------------------------------------------------------------


def anchor(title: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _link(full_name: str) -> str:
    return f"[`{full_name}`](#{anchor(full_name)})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


# Statuses every transcoded route may answer; the table lists the others.
SHARED_STATUSES = ("400", "429", "500", "503", "504")
# Headers every route takes or answers with; the table lists the others.
SHARED_HEADERS = ("X-Request-ID", "traceparent", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _reasons(response: dict) -> list[str]:
    for part in response["content"]["application/json"]["schema"].get("allOf", []):
        reason = part.get("properties", {}).get("error", {}).get("properties", {}).get("reason")
        if reason:
            return reason["enum"]
    return []


def rest_routes(document: dict) -> str:
    lines = [
        "| method | path | what it does | success | other answers | parameters |",
        "|---|---|---|---|---|---|",
    ]
    for path, operations in document["paths"].items():
        for verb, operation in operations.items():
            if operation["tags"] == ["operations"]:
                what = operation["summary"]
            else:
                service = operation["summary"].rsplit(".", 1)[0]  # the RPC's full name, less the method
                what = f"[`{operation['summary']}`](#{anchor(service)})"
                if operation.get("security"):
                    what += "; admin: `Authorization: Bearer $ADMIN_TOKEN`"
            parameters = {}
            for parameter in map(lambda item: resolved(document, item), operation.get("parameters", [])):
                if parameter["name"] not in SHARED_HEADERS:
                    parameters.setdefault(parameter["in"], []).append(f"`{parameter['name']}`")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                parameters["body"] = [f"`{name}`" for name in body.get("properties", {})]
            responses = operation["responses"]
            success = next(code for code in responses if code.startswith("2"))
            headers = responses[success].get("headers", {})
            success += "".join(
                f", `{name}: {resolved(document, header)['description']}`"
                for name, header in headers.items()
                if name not in SHARED_HEADERS
            )
            shared = SHARED_STATUSES if operation["tags"] != ["operations"] else ("400", "500")
            others = [
                f"{status} " + "/".join(f"`{reason}`" for reason in _reasons(response))
                for status, response in responses.items()
                if not status.startswith("2") and status not in shared
            ]
            listed = "; ".join(f"{where} {', '.join(names)}" for where, names in parameters.items()) or "—"
            lines.append(
                f"| {verb.upper()} | `{path}` | {_cell(what)} | {success} | {'; '.join(others) or '—'} | {listed} |"
            )
    return "\n".join(lines) + "\n"


def grpc_codes() -> str:
    lines = ["| gRPC code | HTTP status |", "|---|---|"]
    lines += [f"| `{code.name}` | {status} |" for code, status in HTTP_STATUS_BY_CODE.items() if code.name != "OK"]
    return "\n".join(lines) + "\n"


def grpc_services(comments: dict[str, str]) -> str:
    bindings = {binding.method.full_name: binding for binding in route_table(SERVICES)}
    parts = []
    for service in SERVICES.values():
        parts.append(f"### {service.full_name}\n")
        if service.full_name in comments:
            parts.append(comments[service.full_name] + "\n")
        parts.append("| RPC | request → response | REST route | what it does |\n|---|---|---|---|")
        for method in service.methods:
            binding = bindings.get(method.full_name)
            route = f"{binding.verb} `{binding.template}`" if binding else "— (gRPC only)"
            parts.append(
                f"| `{method.name}` | {_link(method.input_type.full_name)} → {_link(method.output_type.full_name)} "
                f"| {route} | {_cell(comments.get(method.full_name, ''))} |"
            )
        parts.append("")
    return "\n".join(parts)


def _type(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            return f"map<{_type(key)}, {_type(value)}>"
        name = field.message_type.full_name
        single = _WELL_KNOWN.get(name, _link(name))
    elif field.type == FieldDescriptor.TYPE_ENUM:
        single = _link(field.enum_type.full_name)
    else:
        single = _SCALAR_NAMES[field.type]
    return f"repeated {single}" if field.is_repeated else single


def messages(comments: dict[str, str]) -> str:
    files = []
    for service in SERVICES.values():
        if service.file not in files:
            files.append(service.file)
    parts = []
    for file in files:
        parts.append(f"### Package `{file.package}`\n")
        for enum in file.enum_types_by_name.values():
            parts.append(_enum(enum, comments))
        for message in file.message_types_by_name.values():
            parts.append(_message(message, comments))
    return "\n".join(parts)


def _enum(enum: EnumDescriptor, comments: dict[str, str]) -> str:
    lines = [f"#### {enum.full_name}\n"]
    if enum.full_name in comments:
        lines.append(comments[enum.full_name] + "\n")
    lines += ["| value | meaning |", "|---|---|"]
    for value in enum.values:
        lines.append(f"| `{value.name}` | {_cell(comments.get(f'{enum.full_name}.{value.name}', ''))} |")
    return "\n".join(lines) + "\n"


def _message(message: Descriptor, comments: dict[str, str]) -> str:
    lines = [f"#### {message.full_name}\n"]
    if message.full_name in comments:
        lines.append(comments[message.full_name] + "\n")
    if not message.fields:
        lines.append("No fields.")
        return "\n".join(lines) + "\n"
    lines += ["| field | type | meaning |", "|---|---|---|"]
    for field in message.fields:
        lines.append(f"| `{field.name}` | {_type(field)} | {_cell(comments.get(field.full_name, ''))} |")
    return "\n".join(lines) + "\n"


def _as_make_run_starts_it() -> Gatekeeper:
    """The gateway's defaults (AUTH=off: only the admin routes take a token),
    whatever this shell's environment says."""
    with mock.patch.dict(os.environ, clear=True):
        return Gatekeeper(GatewayConfig.from_env())


def render(text: str) -> str:
    """`text` (docs/api.md) with every generated block written anew."""
    comments = proto_comments()
    blocks = {
        "rest-routes": lambda: rest_routes(
            openapi_document(route_table(SERVICES), OPERATIONS_ROUTES, _as_make_run_starts_it())
        ),
        "grpc-codes": grpc_codes,
        "grpc-services": lambda: grpc_services(comments),
        "messages": lambda: messages(comments),
    }
    found = {match.group("name") for match in BLOCK.finditer(text)}
    if found != set(blocks):
        raise SystemExit(f"docs/api.md has blocks {sorted(found)}; expected {sorted(blocks)}")
    return BLOCK.sub(lambda m: m.group(1) + blocks[m.group("name")]() + m.group(3), text)


if __name__ == "__main__":
    API_DOC.write_text(render(API_DOC.read_text()))
    sys.exit(0)
