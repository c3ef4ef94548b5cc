"""The operation-level half of /openapi.json (gateway/openapi.py builds the
paths and the message schemas): every status an operation can answer, with
the reasons behind it and the headers that come with it; the headers it
reads; who must authenticate in the mode the gateway runs; its operationId;
and the links between operations that clients (and schemathesis's stateful
tests) follow. API.md is the source of every row here."""

from dataclasses import dataclass

from gateway.auth import Demand
from gateway.errors import HTTP_STATUS_BY_REASON
from gateway.openapi_examples import REQUEST_EXAMPLES, RESPONSE_EXAMPLES, error_example
from gateway.schemas import REF
from gateway.transcoding import Binding
from plumbing.identity import ADMIN_SCOPE

ERROR_SCHEMA = "Error"
# The bearer scheme of each AUTH mode: ADMIN_TOKEN (off) or a JWT (jwt).
ADMIN_TOKEN_SCHEME = "adminToken"
JWT_SCHEME = "bearerJwt"

_PARAMETER = "#/components/parameters/"
_HEADER = "#/components/headers/"

# Headers the gateway answers with, by the name used in components.headers.
RESPONSE_HEADERS = {
    "X-Request-ID": {
        "description": "The caller's X-Request-ID when it matched [A-Za-z0-9._-]{1,128}, else a new one; "
        "it names the request in every log line it caused",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
    },
    **{
        f"X-RateLimit-{name}": {"description": description, "schema": {"type": "integer", "minimum": 0}}
        for name, description in (
            ("Limit", "Requests allowed per window (RATE_LIMIT) for this client IP"),
            ("Remaining", "Requests left in the current window"),
            ("Reset", "When the current window ends, in seconds since the Unix epoch"),
        )
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    },
    "WWW-Authenticate": {
        "description": 'The RFC 6750 challenge: Bearer realm="shop", with error="invalid_token" when a token '
        'was sent but is bad or expired (error="insufficient_scope" on a 403 for want of a scope)',
        "schema": {"type": "string"},
    },
    "Location": {"description": "The created resource", "schema": {"type": "string"}},
    "Allow": {"description": "The methods the path answers", "schema": {"type": "string"}},
}
_RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")

# Headers the gateway reads, as components.parameters.
REQUEST_HEADERS = {
    "RequestId": {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": "Your id for this request, kept when it matches [A-Za-z0-9._-]{1,128} "
        "(any other value is replaced by a new one); echoed in the answer",
        "schema": {"type": "string"},
    },
    "Traceparent": {
        "name": "traceparent",
        "in": "header",
        "required": False,
        "description": "A W3C trace context: the request's spans continue that trace (one that does not "
        "parse starts a new trace)",
        "schema": {"type": "string"},
        "example": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    },
    "IdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Makes a retry safe (scoped to the customer, kept at least 24 h): the same key with "
        "the same body answers the first attempt's outcome and never places a second order; "
        "with another body it answers 422",
        "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$", "minLength": 1, "maxLength": 255},
        "example": "c0ffee-2026-11-21-0001",
    },
}


# The request field that names the customer. With AUTH=jwt a customer's token
# stands in for it (API.md: absent means the token's subject); with AUTH=off
# nothing does, so a body that has it must carry it.
CUSTOMER_FIELD = "customer_id"


def customer_named(body: dict, jwt: bool) -> dict:
    """`body` (a request body's schema) with its customer field required
    where nothing else names the customer."""
    if jwt or CUSTOMER_FIELD not in body["properties"]:
        return body
    body["properties"][CUSTOMER_FIELD] = {**body["properties"][CUSTOMER_FIELD], "minLength": 1}
    body["required"] = [*body.get("required", ()), CUSTOMER_FIELD]
    return body


@dataclass(frozen=True)
class Answer:
    """One status an operation can answer, and why."""

    status: int
    reasons: tuple[str, ...]
    description: str
    headers: tuple[str, ...] = ()


# The answers of one RPC beyond those every route shares (API.md's error
# table: the reasons of the services' domain rules).
_DOMAIN_ANSWERS = {
    "CreateOrder": (
        Answer(
            400,
            ("MIXED_CURRENCIES", "PAYMENT_NOT_CAPTURED"),
            "A payment method that is not the customer's or was never issued, items in different currencies; "
            "the order is kept FAILED and named in the details",
        ),
        Answer(
            402,
            ("PAYMENT_DECLINED",),
            "The payment was declined: the order is kept PAYMENT_FAILED, its stock returned, its id in the details",
        ),
        Answer(404, ("NOT_FOUND",), "An item names a product that does not exist"),
        Answer(
            409,
            ("OUT_OF_STOCK", "IDEMPOTENCY_KEY_IN_USE", "ORDER_UNRESOLVED"),
            "Not enough stock (the order is kept FAILED); or the first request with this Idempotency-Key is "
            "still unresolved",
        ),
        Answer(422, ("IDEMPOTENCY_KEY_REUSED",), "The Idempotency-Key was used before with a different body"),
    ),
    "CancelOrder": (
        Answer(
            409,
            ("NOT_CANCELLABLE", "ORDER_IN_PROGRESS"),
            "The order ended PAYMENT_FAILED or FAILED (nothing to cancel), or it is still PENDING",
        ),
    ),
    "AdjustStock": (Answer(409, ("OUT_OF_STOCK",), "The adjustment would take the stock below 0"),),
    "CheckAvailability": (Answer(404, ("NOT_FOUND",), "An item names a product that does not exist"),),
}
# Statuses the gateway itself can answer on every transcoded route.
_SHARED_ANSWERS = (
    Answer(
        400,
        ("INVALID_ARGUMENT",),
        "Malformed: not JSON, a wrong type, a missing or out-of-range field, an id not matching "
        "^[A-Za-z0-9_-]{1,64}$, an unknown query parameter, a bad Idempotency-Key; a BadRequest detail "
        "names each field",
    ),
    Answer(429, ("RATE_LIMITED",), "Over RATE_LIMIT for this client IP", ("Retry-After",)),
    Answer(500, ("INTERNAL",), "An unexpected failure (the log has the rest)"),
    Answer(
        503,
        ("UNAVAILABLE",),
        "A backend, its database or the identity provider's keys are unavailable for now",
        ("Retry-After",),
    ),
    Answer(504, ("DEADLINE_EXCEEDED",), "A backend did not answer within UPSTREAM_TIMEOUT_S"),
)

# Links between operations (OpenAPI 3 link objects), by the RPC answering
# and its success status: what a client does next with what it got.
_LINKS = {
    "CreateOrder": {
        "GetOrder": {"operationId": "GetOrder", "parameters": {"order_id": "$response.body#/id"}},
        "CancelOrder": {"operationId": "CancelOrder", "parameters": {"order_id": "$response.body#/id"}},
        "ListPaymentsOfOrder": {"operationId": "ListPayments", "parameters": {"order_id": "$response.body#/id"}},
        "GetPayment": {"operationId": "GetPayment", "parameters": {"payment_id": "$response.body#/payment_id"}},
    },
    "GetOrder": {
        "CancelOrder": {"operationId": "CancelOrder", "parameters": {"order_id": "$response.body#/id"}},
    },
    "CreatePaymentMethod": {
        "GetPaymentMethod": {
            "operationId": "GetPaymentMethod",
            "parameters": {"payment_method_id": "$response.body#/id"},
        },
        "CreateOrderWithIt": {
            "operationId": "CreateOrder",
            "requestBody": {"payment_method": "$response.body#/id"},
            "description": "Order with the new payment method (the rest of the body is yours)",
        },
    },
    "UpsertProduct": {
        "GetProduct": {"operationId": "GetProduct", "parameters": {"product_id": "$response.body#/product_id"}},
        "AdjustStock": {"operationId": "AdjustStock", "parameters": {"product_id": "$response.body#/product_id"}},
    },
    "GetProduct": {
        "AdjustStock": {"operationId": "AdjustStock", "parameters": {"product_id": "$response.body#/product_id"}},
    },
}


def operation_id(binding: Binding) -> str:
    """The RPC's name ("CreateOrder"); an additional binding adds its index."""
    service = binding.method.containing_service.name
    return binding.endpoint.removeprefix(f"{service}_")


def shadowing_templates(binding: Binding, bindings: list[Binding]) -> list[str]:
    """The other routes' templates that a value of `binding`'s path
    variables spells out (/inventory/check for /inventory/{product_id}) and
    that do not answer `binding`'s verb: such a path is that route's, so a
    request there answers 405 with its Allow, never this RPC with an id of
    "check"."""
    segments = binding.template.strip("/").split("/")
    served = {(other.template, other.verb) for other in bindings}
    shadowing: list[str] = []
    for other in bindings:
        theirs = other.template.strip("/").split("/")
        if len(theirs) != len(segments) or other.template == binding.template or other.template in shadowing:
            continue
        if (other.template, binding.verb) in served:
            continue
        if all(
            mine == their or (mine.startswith("{") and not their.startswith("{"))
            for mine, their in zip(segments, theirs, strict=True)
        ):
            shadowing.append(other.template)
    return shadowing



def request_headers(binding: Binding | None) -> list[dict]:
    """The header parameters an operation reads (None: an operations route)."""
    names = ["RequestId", "Traceparent"]
    if binding is not None and binding.method.name == "CreateOrder":
        names.append("IdempotencyKey")
    return [{"$ref": _PARAMETER + name} for name in names]


def request_example(binding: Binding) -> dict:
    example = REQUEST_EXAMPLES.get(binding.method.name)
    return {"example": example} if example is not None else {}


def security(demand: Demand, jwt: bool) -> list[dict] | None:
    """The scheme an operation needs in this mode (None: anyone may call it)."""
    if demand is Demand.NOTHING:
        return None
    return [{JWT_SCHEME if jwt else ADMIN_TOKEN_SCHEME: []}]


def security_schemes(jwt: bool) -> dict:
    if jwt:
        return {
            JWT_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": f"AUTH=jwt: a JWT whose sub is the customer; admin routes need the {ADMIN_SCOPE} "
                "scope (in scope or scp)",
            }
        }
    return {
        ADMIN_TOKEN_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "AUTH=off: the admin routes take ADMIN_TOKEN; every other route is open",
        }
    }


def transcoded_responses(binding: Binding, demand: Demand, jwt: bool, shadowed_by: list[str]) -> dict:
    """Every status `binding` can answer in this mode: its success and each
    error, with reasons and headers. `shadowed_by`: the paths that take a
    value of the path variable as their own (answering 405 to this verb)."""
    answers = list(_SHARED_ANSWERS)
    # A path names the resource to read or change; PUT creates what it names.
    if binding.variables and binding.verb != "PUT":
        answers.append(Answer(404, ("NOT_FOUND",), "No such resource (with AUTH=jwt: or not yours)"))
    if shadowed_by:
        answers.append(
            Answer(
                405,
                ("METHOD_NOT_ALLOWED",),
                "The id is not valid here: " + ", ".join(f"`{path}`" for path in shadowed_by)
                + " is a route of its own, which answers other methods (see Allow)",
                ("Allow",),
            )
        )
    if binding.body:
        answers.append(Answer(413, ("PAYLOAD_TOO_LARGE",), "The body is over 64 KiB"))
    answers += _auth_answers(binding, demand, jwt)
    answers += _DOMAIN_ANSWERS.get(binding.method.name, ())
    responses = {}
    for status, merged in sorted(_merged(answers).items()):
        responses[str(status)] = error_response(merged, rate_limited=True)
    success = {
        "description": "Created" if binding.options.created else "OK",
        "headers": _headers(("Location",) if binding.options.location else (), rate_limited=True),
        "content": {"application/json": {"schema": None}},  # filled in by openapi.py
    }
    example = RESPONSE_EXAMPLES.get(binding.method.name)
    if example is not None:
        success["content"]["application/json"]["example"] = example
    links = _LINKS.get(binding.method.name)
    if links:
        success["links"] = links
    if binding.options.location:
        success["headers"]["Location"] = {
            **RESPONSE_HEADERS["Location"],
            "required": True,
            "description": binding.options.location,
        }
    responses[str(binding.success_status)] = success
    return dict(sorted(responses.items()))


def _auth_answers(binding: Binding, demand: Demand, jwt: bool) -> list[Answer]:
    if demand is Demand.NOTHING:
        return []
    if not jwt:
        return [
            Answer(401, ("UNAUTHENTICATED",), "No admin token, or a wrong one", ("WWW-Authenticate",)),
            Answer(403, ("PERMISSION_DENIED",), "Admin routes are off: the gateway has no ADMIN_TOKEN"),
        ]
    answers = [Answer(401, ("UNAUTHENTICATED",), "No token, or a bad or expired one", ("WWW-Authenticate",))]
    if demand is Demand.ADMIN:
        answers.append(
            Answer(403, ("PERMISSION_DENIED",), f"A token without the {ADMIN_SCOPE} scope", ("WWW-Authenticate",))
        )
    elif CUSTOMER_FIELD in binding.method.input_type.fields_by_name:
        answers.append(Answer(403, ("PERMISSION_DENIED",), "customer_id names another customer"))
    return answers


def _merged(answers: list[Answer]) -> dict[int, Answer]:
    """One answer per status: reasons, descriptions and headers together."""
    by_status: dict[int, Answer] = {}
    for answer in answers:
        known = by_status.get(answer.status)
        if known is None:
            by_status[answer.status] = answer
            continue
        by_status[answer.status] = Answer(
            answer.status,
            tuple(dict.fromkeys(known.reasons + answer.reasons)),
            f"{known.description}. {answer.description}",
            tuple(dict.fromkeys(known.headers + answer.headers)),
        )
    return by_status


def error_response(answer: Answer, rate_limited: bool) -> dict:
    """An error status: the Error schema with this status's code and reasons."""
    reasons = ", ".join(f"`{reason}`" for reason in answer.reasons)
    return {
        "description": f"{answer.description} (reason: {reasons})",
        "headers": _headers(answer.headers, rate_limited),
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        {"$ref": REF + ERROR_SCHEMA},
                        {
                            "type": "object",
                            "properties": {
                                "error": {
                                    "type": "object",
                                    "properties": {
                                        "code": {"type": "integer", "enum": [answer.status]},
                                        "reason": {"type": "string", "enum": list(answer.reasons)},
                                    },
                                }
                            },
                        },
                    ]
                },
                "example": error_example(answer.status, answer.reasons[0]),
            }
        },
    }


def _headers(names: tuple[str, ...], rate_limited: bool) -> dict:
    """Each header an answer carries, all of them always present."""
    every = ("X-Request-ID", *(_RATE_LIMIT_HEADERS if rate_limited else ()), *names)
    return {name: {"$ref": _HEADER + name} for name in every}


def header_components() -> dict:
    """components.headers: each is always present where an answer lists it."""
    return {name: {**header, "required": True} for name, header in RESPONSE_HEADERS.items()}


def parameter_components() -> dict:
    return dict(REQUEST_HEADERS)


def operations_route_responses(path: str, description: str, content: dict) -> dict:
    """The answers of an operations route (never rate limited)."""
    success: dict = {"description": description, "headers": _headers((), rate_limited=False), "content": content}
    responses = {
        "200": success,
        "400": error_response(Answer(400, ("INVALID_ARGUMENT",), "An unknown query parameter"), False),
        "500": error_response(Answer(500, ("INTERNAL",), "An unexpected failure (the log has the rest)"), False),
    }
    if path == "/ready":
        responses["503"] = error_response(
            Answer(503, ("NOT_READY",), "A backend is not SERVING; the body lists each backend too"), False
        )
    return responses


def error_schema() -> dict:
    """The API's one error shape (API.md, "Errors")."""
    return {
        "type": "object",
        "required": ["error", "request_id"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "status", "reason", "message", "details"],
                "properties": {
                    "code": {"type": "integer", "description": "the HTTP status"},
                    "status": {"type": "string", "description": "the gRPC code name"},
                    "reason": {
                        "type": "string",
                        "description": "a stable UPPER_SNAKE cause; each response lists its own, e.g. "
                        + ", ".join(HTTP_STATUS_BY_REASON),
                    },
                    "message": {"type": "string", "description": "for people; it may name the ids or path asked "
                                "for, never a card number, CVC or token"},
                    "details": {
                        "type": "array",
                        "description": "google.rpc details: an ErrorInfo (reason, domain shop, metadata such as "
                        "order_id) and, for a malformed request, a BadRequest with field violations",
                        "items": {"type": "object", "additionalProperties": True},
                    },
                },
            },
            "request_id": {"type": "string"},
        },
    }


def resolved(document: dict, item: dict) -> dict:
    """`item` of `document`, or the component its $ref names."""
    ref = item.get("$ref")
    if ref is None:
        return item
    kind, name = ref.removeprefix("#/components/").split("/", 1)
    return document["components"][kind][name]
