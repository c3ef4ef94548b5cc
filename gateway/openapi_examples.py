"""Examples in /openapi.json: a request body and a success answer for each
RPC, by name, and an error body per status (tests/test_openapi_document.py
checks every example against the schema it illustrates)."""

_ORDER = {
    "id": "ord_919884788f331663742ec0cf",
    "customer_id": "C123",
    "status": "CONFIRMED",
    "items": [{"product_id": "P001", "quantity": 2, "unit_price_cents": 1999}],
    "total_cents": 3998,
    "currency": "USD",
    "payment_id": "pay_47f7afe981ed001924a85500",
    "created_at": "2026-11-21T10:00:00Z",
    "updated_at": "2026-11-21T10:00:00Z",
}
_PRODUCT = {"product_id": "P001", "name": "Wireless Mouse", "price_cents": 1999, "currency": "USD", "available": 98}
_PAYMENT_METHOD = {
    "id": "pm_317e3329f5cbec0c43672c40",
    "card_brand": "visa",
    "card_last4": "4242",
    "exp_month": 12,
    "exp_year": 2030,
}
_PAYMENT = {
    "id": "pay_47f7afe981ed001924a85500",
    "order_id": "ord_919884788f331663742ec0cf",
    "amount_cents": 3998,
    "currency": "USD",
    "status": "CAPTURED",
    "card_brand": "visa",
    "card_last4": "4242",
    "decline_reason": "",
    "created_at": "2026-11-21T10:00:00Z",
    "updated_at": "2026-11-21T10:00:00Z",
}

# Request bodies, by RPC name.
REQUEST_EXAMPLES = {
    "CreateOrder": {"customer_id": "C123", "items": [{"product_id": "P001", "quantity": 2}], "payment_method": "tok_visa"},
    "CheckAvailability": {"items": [{"product_id": "P001", "quantity": 2}]},
    "UpsertProduct": {"name": "Wireless Mouse", "price_cents": 1999, "currency": "USD", "available": 100},
    "AdjustStock": {"delta": 25, "reason": "restock"},
    "CreatePaymentMethod": {"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}},
}

# Success bodies, by RPC name.
RESPONSE_EXAMPLES = {
    "CreateOrder": _ORDER,
    "GetOrder": _ORDER,
    "ListOrders": {"orders": [_ORDER], "next_page_token": ""},
    "CancelOrder": {**_ORDER, "status": "CANCELLED"},
    "ListProducts": {"products": [_PRODUCT]},
    "GetProduct": _PRODUCT,
    "CheckAvailability": {
        "available": True,
        "items": [{"product_id": "P001", "quantity": 2, "available": 98, "in_stock": True}],
    },
    "UpsertProduct": {**_PRODUCT, "available": 100},
    "AdjustStock": {**_PRODUCT, "available": 123},
    "CreatePaymentMethod": _PAYMENT_METHOD,
    "GetPaymentMethod": _PAYMENT_METHOD,
    "ListPayments": {"payments": [_PAYMENT]},
    "GetPayment": _PAYMENT,
}

_BACKEND = {"service": "shop.order.v1.OrderService", "address": "localhost:50053", "status": "SERVING", "latency_ms": 1.2}

# Success bodies of the operations routes, by path.
OPERATIONS_EXAMPLES = {
    "/health": {"status": "ok"},
    "/ready": {"status": "ready", "backends": {"order": _BACKEND}},
    "/mesh/traffic-stats": {
        "started_at": "2026-11-21T10:00:00Z",
        "uptime_seconds": 3600.5,
        "total_requests": 1200,
        "rate_limited_requests": 3,
        "upstreams": {
            "order": {
                "service": "shop.order.v1.OrderService",
                "requests": 400,
                "errors": 2,
                "success_rate": 0.995,
                "codes": {"OK": 398, "FAILED_PRECONDITION": 2},
                "latency_ms": {"avg": 15.7, "p50": 6.25, "p95": 87.5, "p99": 97.5},
            }
        },
    },
    "/mesh/service-status": {"overall": "SERVING", "backends": {"order": _BACKEND}},
    "/openapi.json": {"openapi": "3.0.3", "info": {"title": "Shop REST gateway", "version": "1.0.0"}, "paths": {}},
}

_CODE_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "FAILED_PRECONDITION",
    413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_example(status: int, reason: str) -> dict:
    """An error body as the gateway answers it, with this status and reason."""
    return {
        "error": {
            "code": status,
            "status": _CODE_NAMES[status],
            "reason": reason,
            "message": "what went wrong, for people",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "shop", "metadata": {}}
            ],
        },
        "request_id": "4c2d967e78c14fab8d5329851bceac2b",
    }
