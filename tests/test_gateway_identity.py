"""API.md's "Identity and access", row by row, through the gateway in front
of the real inventory, payment and order services, in-process: AUTH=off as
in the original design, and AUTH=jwt with tokens signed by test keys -
RS256 and ES256 through a JWKS served by the test, HS256 through the
shared secret."""

import base64
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway import auth as gateway_auth
from gateway.config import AuthConfig
from gateway.token import main as token_main
from gateway.token import mint
from plumbing.identity import ADMIN_SCOPE
from tests.harness import ROOT
from tests.test_gateway_readme_flows import curl
from tests.test_gateway_support import ADMIN_TOKEN, admin_headers, assert_error, make_client, running_backends

ISSUER = "https://issuer.test/"
AUDIENCE = "shop-api"
SECRET = "b7e2c94f0a1d83e6f5c2a9b0d4e7f1a3"
HS256 = AuthConfig("jwt", hs256_secret=SECRET, issuer=ISSUER, audience=AUDIENCE)

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
PRODUCT = "P005"


def _jwk(algorithm, key, kid: str) -> dict:
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


class KeyServer:
    """An identity provider's JWKS endpoint, counting how often it is fetched."""

    def __init__(self):
        self.keys = [_jwk(jwt.algorithms.RSAAlgorithm, RSA_KEY, "rsa-1"), _jwk(jwt.algorithms.ECAlgorithm, EC_KEY, "ec-1")]
        self.fetches = 0
        self.down = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.fetches += 1
                if server.down:
                    self.send_error(503)
                    return
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/.well-known/jwks.json"

    def stop(self):
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    """The real services, shared by this module's tests (each test uses customers of its own)."""
    folder = tmp_path_factory.mktemp("identity")
    with running_backends(lambda name: f"sqlite:///{folder}/{name}.db", real_orders=True) as running:
        yield running


@pytest.fixture(scope="module")
def key_server():
    server = KeyServer()
    yield server
    server.stop()


@pytest.fixture
def hs256(backends):
    return make_client(backends, auth=HS256, admin_token="")


@pytest.fixture
def jwks(backends, key_server):
    return make_client(backends, auth=AuthConfig("jwt", jwks_url=key_server.url, issuer=ISSUER, audience=AUDIENCE))


@pytest.fixture
def off(backends):
    return make_client(backends)


def claims(sub: str, *, ttl_s: int = 300, **extra) -> dict:
    now = int(time.time())
    return {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + ttl_s, **extra}


def rs256(sub: str, kid: str = "rsa-1", **extra) -> str:
    return jwt.encode(claims(sub, **extra), RSA_KEY, algorithm="RS256", headers={"kid": kid})


def es256(sub: str, **extra) -> str:
    return jwt.encode(claims(sub, **extra), EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})


def hs(sub: str, scopes: tuple[str, ...] = (), ttl_s: int = 300) -> str:
    """A token as `python -m gateway.token` mints it."""
    return mint(HS256, sub, list(scopes), ttl_s)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict, payload: dict) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"


def order_body(customer_id: str | None = None, payment_method: str = "tok_visa") -> dict:
    body = {"items": [{"product_id": PRODUCT, "quantity": 1}], "payment_method": payment_method}
    if customer_id is not None:
        body["customer_id"] = customer_id
    return body


def card() -> dict:
    return {"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}}


def placed(client, headers, customer_id=None) -> dict:
    response = client.post("/orders", json=order_body(customer_id), headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def assert_same_error(theirs, unknown, their_id: str, unknown_id: str) -> None:
    """Another customer's resource answers exactly as an unknown one does."""
    assert theirs.status_code == unknown.status_code == 404
    a, b = theirs.get_json()["error"], unknown.get_json()["error"]
    assert json.dumps(a).replace(their_id, unknown_id) == json.dumps(b)


# Browsing is public


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", "/inventory", None),
        ("GET", f"/inventory/{PRODUCT}", None),
        ("POST", "/inventory/check", {"product_id": PRODUCT, "quantity": 1}),
        ("GET", "/health", None),
        ("GET", "/openapi.json", None),
    ],
)
@pytest.mark.parametrize("credentials", ["none", "customer", "admin", "garbage"])
def test_browsing_and_operations_need_no_token(hs256, off, method, path, body, credentials):
    headers = {
        "none": {},
        "customer": bearer(hs("browser")),
        "admin": bearer(hs("ops", (ADMIN_SCOPE,))),
        "garbage": bearer("not-a-jwt"),
    }[credentials]
    for client in (hs256, off):
        assert client.open(path, method=method, json=body, headers=headers).status_code == 200


# Without a valid token: 401 on every customer and admin route


CUSTOMER_ROUTES = [
    ("POST", "/orders", order_body("C1")),
    ("GET", "/orders", None),
    ("GET", "/orders/ord_1", None),
    ("DELETE", "/orders/ord_1", None),
    ("GET", "/payments/pay_1", None),
    ("GET", "/payments?order_id=ord_1", None),
    ("GET", "/payment_methods/pm_0123456789abcdef01234567", None),
    ("POST", "/payment_methods", card()),
    ("PUT", f"/inventory/{PRODUCT}", {"available": 1}),
    ("POST", f"/inventory/{PRODUCT}/adjustments", {"delta": 1}),
]


@pytest.mark.parametrize("method, path, body", CUSTOMER_ROUTES)
def test_no_token_is_401_with_a_bearer_challenge(hs256, method, path, body):
    response = hs256.open(path, method=method, json=body)
    error = assert_error(response, 401, "UNAUTHENTICATED", "UNAUTHENTICATED")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="shop"'
    assert "Authorization: Bearer" in error["message"]


def test_a_bad_token_is_401_invalid_token_before_anything_is_called(hs256, backends):
    response = hs256.post("/orders", json=order_body("C1"), headers=bearer(hs("C1") + "x"))
    error = assert_error(response, 401, "UNAUTHENTICATED", "UNAUTHENTICATED")
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="shop", error="invalid_token"')
    assert "signature" in error["message"]
    assert hs256.get("/orders?customer_id=C1", headers=bearer(hs("ops", (ADMIN_SCOPE,)))).get_json()["orders"] == []


def _rsa_public_pem() -> bytes:
    return RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _hs256_with_public_key(payload: dict) -> str:
    """The classic confusion: HS256 with the provider's public key as the secret."""
    signing_input = unsigned({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, payload)
    mac = hmac.HMAC(_rsa_public_pem(), hashes.SHA256())
    mac.update(signing_input.encode())
    return f"{signing_input}.{_b64(mac.finalize())}"


BAD_TOKENS = {
    "expired": (lambda: rs256("C1", ttl_s=-120), "expired"),
    "wrong-issuer": (lambda: rs256("C1", iss="https://other.test/"), "another issuer"),
    "wrong-audience": (lambda: rs256("C1", aud="someone-else"), "audience"),
    "alg-none": (lambda: unsigned({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims("C1")) + ".", "algorithm"),
    "hs256-with-the-rsa-public-key": (lambda: _hs256_with_public_key(claims("C1")), "algorithm"),
    "no-exp": (lambda: jwt.encode({"sub": "C1", "iss": ISSUER, "aud": AUDIENCE}, RSA_KEY, "RS256", {"kid": "rsa-1"}), "exp"),
    "not-yet-valid": (lambda: rs256("C1", nbf=int(time.time()) + 600), "not valid yet"),
    "unknown-kid": (lambda: rs256("C1", kid="rotated-away"), "not one of the identity provider's"),
    "signed-by-another-key": (
        lambda: jwt.encode(claims("C1"), rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256", {"kid": "rsa-1"}),
        "signature",
    ),
    "not-a-customer-id": (lambda: rs256("C 1; DROP"), "not a valid customer id"),
    "not-a-jwt": (lambda: "opaque-access-token", "well-formed"),
}


@pytest.mark.parametrize("name", BAD_TOKENS)
def test_bad_tokens_through_the_jwks_are_401_invalid_token(jwks, name):
    make, problem = BAD_TOKENS[name]
    response = jwks.get("/orders", headers=bearer(make()))
    error = assert_error(response, 401, "UNAUTHENTICATED", "UNAUTHENTICATED")
    assert problem in error["message"]
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="shop", error="invalid_token", error_description="')
    assert challenge.count('"') == 6


def test_bad_hs256_tokens_are_401(hs256):
    for token, problem in [
        (hs("C1", ttl_s=-120), "expired"),
        (mint(AuthConfig("jwt", hs256_secret=SECRET, issuer="https://other.test/", audience=AUDIENCE), "C1", [], 300), "issuer"),
        (mint(AuthConfig("jwt", hs256_secret=SECRET, issuer=ISSUER, audience="other"), "C1", [], 300), "audience"),
        (mint(AuthConfig("jwt", hs256_secret="f" * 32, issuer=ISSUER, audience=AUDIENCE), "C1", [], 300), "signature"),
        (unsigned({"alg": "none", "typ": "JWT"}, claims("C1")) + ".", "algorithm"),
        (rs256("C1"), "algorithm"),  # a provider's token where only the shared secret is trusted
    ]:
        response = hs256.get("/orders", headers=bearer(token))
        assert problem in assert_error(response, 401, "UNAUTHENTICATED", "UNAUTHENTICATED")["message"]


def test_clock_skew_within_60_seconds_is_forgiven(jwks, hs256):
    assert jwks.get("/orders", headers=bearer(rs256("skewed", ttl_s=-30))).status_code == 200
    assert hs256.get("/orders", headers=bearer(hs("skewed", ttl_s=-30))).status_code == 200
    assert jwks.get("/orders", headers=bearer(rs256("skewed", nbf=int(time.time()) + 30))).status_code == 200


def test_rs256_and_es256_tokens_from_the_jwks_and_hs256_from_the_secret_are_taken(jwks, hs256):
    for client, token in [(jwks, rs256("keyed")), (jwks, es256("keyed")), (hs256, hs("keyed"))]:
        response = client.get("/orders", headers=bearer(token))
        assert response.status_code == 200, response.get_data(as_text=True)


def test_the_jwks_is_fetched_once_and_never_per_request(backends, key_server):
    client = make_client(backends, auth=AuthConfig("jwt", jwks_url=key_server.url, issuer=ISSUER, audience=AUDIENCE))
    before = key_server.fetches
    for _ in range(5):
        assert client.get("/orders", headers=bearer(rs256("cached"))).status_code == 200
    # A flood of made-up key ids right after: at most one fetch per 30 s.
    for n in range(20):
        assert client.get("/orders", headers=bearer(rs256("cached", kid=f"made-up-{n}"))).status_code == 401
    assert key_server.fetches - before == 1


def test_a_rotated_key_is_fetched_when_a_token_names_it(backends, key_server, monkeypatch):
    monkeypatch.setattr(gateway_auth, "JWKS_REFETCH_S", 0)  # no cool-down between refreshes, for this test
    client = make_client(backends, auth=AuthConfig("jwt", jwks_url=key_server.url, issuer=ISSUER, audience=AUDIENCE))
    assert client.get("/orders", headers=bearer(rs256("rotating"))).status_code == 200
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_server.keys = [*key_server.keys, _jwk(jwt.algorithms.RSAAlgorithm, new_key, "rsa-2")]
    try:
        token = jwt.encode(claims("rotating"), new_key, algorithm="RS256", headers={"kid": "rsa-2"})
        assert client.get("/orders", headers=bearer(token)).status_code == 200
    finally:
        key_server.keys = key_server.keys[:2]


def test_the_identity_providers_keys_unreachable_is_503_not_401(backends):
    from tests.test_gateway_support import unused_address

    client = make_client(backends, auth=AuthConfig("jwt", jwks_url=f"http://{unused_address()}/jwks"))
    response = client.get("/orders", headers=bearer(rs256("C1")))
    assert_error(response, 503, "UNAVAILABLE", "UNAVAILABLE")
    assert response.headers["Retry-After"]


def test_while_the_identity_provider_is_down_its_last_keys_stay_in_use(key_server, caplog):
    keys = gateway_auth.ProviderKeys(key_server.url)
    assert keys.get_signing_key("rsa-1").key_type == "RSA"
    key_server.down = True
    try:
        kids = {key.key_id for key in keys.get_jwk_set(refresh=True).keys}
        assert kids == {"rsa-1", "ec-1"}
        assert "identity provider unreachable" in caplog.text
        assert keys.get_signing_key("ec-1").key_type == "EC"
        # Never reached at all: nothing to fall back on (the gateway answers 503).
        with pytest.raises(jwt.PyJWKClientConnectionError):
            gateway_auth.ProviderKeys(key_server.url).get_jwk_set()
    finally:
        key_server.down = False


def test_another_subject_claim_names_the_customer(backends):
    client = make_client(
        backends, auth=AuthConfig("jwt", hs256_secret=SECRET, issuer=ISSUER, audience=AUDIENCE, subject_claim="cid")
    )
    token = jwt.encode({**claims("idp-user-1"), "cid": "claimed"}, SECRET, algorithm="HS256")
    assert placed(client, bearer(token))["customer_id"] == "claimed"


# POST /orders


def test_a_customer_orders_for_themselves(hs256):
    token = bearer(hs("buyer"))
    assert placed(hs256, token)["customer_id"] == "buyer"
    assert placed(hs256, token, customer_id="buyer")["customer_id"] == "buyer"
    response = hs256.post("/orders", json=order_body("someone-else"), headers=token)
    assert_error(response, 403, "PERMISSION_DENIED", "PERMISSION_DENIED")


def test_an_admin_orders_for_the_customer_named_in_the_body(hs256):
    admin = bearer(hs("ops", (ADMIN_SCOPE,)))
    assert placed(hs256, admin, customer_id="for-whom")["customer_id"] == "for-whom"
    response = hs256.post("/orders", json=order_body(), headers=admin)
    assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")


def test_idempotency_keys_are_scoped_to_the_signed_in_customer(hs256):
    key = {"Idempotency-Key": "shared-key-1"}
    first = hs256.post("/orders", json=order_body(), headers={**bearer(hs("key-a")), **key})
    other = hs256.post("/orders", json=order_body(payment_method="tok_mastercard"), headers={**bearer(hs("key-b")), **key})
    # Not 422 naming key-a's order: key-b's key is key-b's own.
    assert (first.status_code, other.status_code) == (201, 201)
    assert first.get_json()["id"] != other.get_json()["id"]


# GET /orders


def test_a_customer_lists_only_their_own_orders_and_an_admin_all(hs256):
    mine = placed(hs256, bearer(hs("lister-1")))["id"]
    theirs = placed(hs256, bearer(hs("lister-2")))["id"]

    listed = hs256.get("/orders", headers=bearer(hs("lister-1"))).get_json()["orders"]
    assert [o["id"] for o in listed] == [mine]
    response = hs256.get("/orders?customer_id=lister-2", headers=bearer(hs("lister-1")))
    assert_error(response, 403, "PERMISSION_DENIED", "PERMISSION_DENIED")

    admin = bearer(hs("ops", (ADMIN_SCOPE,)))
    every = [o["id"] for o in hs256.get("/orders?page_size=200", headers=admin).get_json()["orders"]]
    assert {mine, theirs} <= set(every)
    filtered = hs256.get("/orders?customer_id=lister-2", headers=admin).get_json()["orders"]
    assert [o["id"] for o in filtered] == [theirs]


# GET and DELETE /orders/{id}, GET /payments/{id}, GET /payments?order_id=, payment methods


def test_another_customers_order_and_payments_answer_as_unknown_ones(hs256):
    order = placed(hs256, bearer(hs("owner")))
    payment_id = order["payment_id"]
    owner, stranger, admin = bearer(hs("owner")), bearer(hs("stranger")), bearer(hs("ops", (ADMIN_SCOPE,)))
    unknown_order, unknown_payment = "ord_000000000000000000000000", "pay_000000000000000000000000"

    assert hs256.get(f"/orders/{order['id']}", headers=owner).status_code == 200
    assert hs256.get(f"/orders/{order['id']}", headers=admin).status_code == 200
    assert_same_error(
        hs256.get(f"/orders/{order['id']}", headers=stranger), hs256.get(f"/orders/{unknown_order}", headers=stranger),
        order["id"], unknown_order,
    )
    assert_same_error(
        hs256.delete(f"/orders/{order['id']}", headers=stranger),
        hs256.delete(f"/orders/{unknown_order}", headers=stranger),
        order["id"], unknown_order,
    )
    assert hs256.get(f"/orders/{order['id']}", headers=owner).get_json()["status"] == "CONFIRMED"

    assert hs256.get(f"/payments/{payment_id}", headers=owner).get_json()["card_last4"] == "4242"
    assert hs256.get(f"/payments/{payment_id}", headers=admin).status_code == 200
    assert_same_error(
        hs256.get(f"/payments/{payment_id}", headers=stranger),
        hs256.get(f"/payments/{unknown_payment}", headers=stranger),
        payment_id, unknown_payment,
    )

    listed = hs256.get(f"/payments?order_id={order['id']}", headers=stranger)
    as_unknown = hs256.get(f"/payments?order_id={unknown_order}", headers=stranger)
    assert (listed.status_code, listed.get_json()) == (as_unknown.status_code, as_unknown.get_json()) == (200, {"payments": []})
    assert [p["id"] for p in hs256.get(f"/payments?order_id={order['id']}", headers=owner).get_json()["payments"]] == [payment_id]
    assert len(hs256.get(f"/payments?order_id={order['id']}", headers=admin).get_json()["payments"]) == 1

    # The owner, and an admin, may cancel.
    assert hs256.delete(f"/orders/{order['id']}", headers=owner).get_json()["status"] == "CANCELLED"


def test_payment_methods_belong_to_their_maker(hs256):
    made = hs256.post("/payment_methods", json=card(), headers=bearer(hs("maker")))
    assert made.status_code == 201
    method_id = made.get_json()["id"]
    never_issued = "pm_" + "0" * 24
    maker, stranger, admin = bearer(hs("maker")), bearer(hs("stranger")), bearer(hs("ops", (ADMIN_SCOPE,)))

    assert hs256.get(f"/payment_methods/{method_id}", headers=maker).status_code == 200
    assert hs256.get(f"/payment_methods/{method_id}", headers=admin).status_code == 200
    assert_same_error(
        hs256.get(f"/payment_methods/{method_id}", headers=stranger),
        hs256.get(f"/payment_methods/{never_issued}", headers=stranger),
        method_id, never_issued,
    )

    # In an order, another customer's method is a pm_ id never issued, of
    # whatever shape: 400, the order kept FAILED.
    theirs = hs256.post("/orders", json=order_body(payment_method=method_id), headers=stranger)
    error = assert_error(theirs, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    their_order = error["details"][0]["metadata"]["order_id"]
    for unknown_method in (never_issued, "pm_doesnotexist"):
        unknown = hs256.post("/orders", json=order_body(payment_method=unknown_method), headers=stranger)
        other = unknown.get_json()["error"]
        unknown_order = other["details"][0]["metadata"]["order_id"]
        assert json.dumps(error).replace(their_order, unknown_order) == json.dumps(other)
    assert hs256.get(f"/orders/{their_order}", headers=stranger).get_json()["status"] == "FAILED"
    assert placed_with(hs256, maker, method_id)["status"] == "CONFIRMED"
    # An admin's order is its customer's: the maker's method only for the maker.
    for_stranger = hs256.post("/orders", json=order_body("stranger", method_id), headers=admin)
    assert_error(for_stranger, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    for_maker = hs256.post("/orders", json=order_body("maker", method_id), headers=admin)
    assert (for_maker.status_code, for_maker.get_json()["status"]) == (201, "CONFIRMED")


def placed_with(client, headers, payment_method) -> dict:
    response = client.post("/orders", json=order_body(payment_method=payment_method), headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def test_a_payment_method_made_under_auth_off_is_seen_by_admins_only(hs256, off):
    method_id = off.post("/payment_methods", json=card()).get_json()["id"]
    assert hs256.get(f"/payment_methods/{method_id}", headers=bearer(hs("anyone"))).status_code == 404
    assert hs256.get(f"/payment_methods/{method_id}", headers=bearer(hs("ops", (ADMIN_SCOPE,)))).status_code == 200


# Admin routes


def test_admin_routes_need_the_admin_scope_and_refuse_admin_token(hs256, backends, caplog):
    caplog.set_level(logging.INFO, logger="gateway.audit")
    path = f"/inventory/{PRODUCT}/adjustments"
    assert_error(hs256.post(path, json={"delta": 1}), 401, "UNAUTHENTICATED", "UNAUTHENTICATED")
    refused = hs256.post(path, json={"delta": 1}, headers=bearer(hs("customer")))
    assert_error(refused, 403, "PERMISSION_DENIED", "PERMISSION_DENIED")
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    # ADMIN_TOKEN is not a credential with AUTH=jwt, even when it is set.
    with_token = make_client(backends, auth=HS256)
    assert_error(with_token.post(path, json={"delta": 1}, headers=admin_headers(ADMIN_TOKEN)), 401, "UNAUTHENTICATED", "UNAUTHENTICATED")

    before = hs256.get(f"/inventory/{PRODUCT}").get_json()["available"]
    admin = bearer(hs("ops-lead", (ADMIN_SCOPE,)))
    assert hs256.post(path, json={"delta": 3}, headers=admin).get_json()["available"] == before + 3
    scp = jwt.encode({**claims("ops-lead"), "scp": ["openid", ADMIN_SCOPE]}, SECRET, algorithm="HS256")
    assert hs256.post(path, json={"delta": -3}, headers=bearer(scp)).status_code == 200

    # One audit line per admin request, refused or not, naming who asked.
    audit = [(r.subject, r.credential, r.status) for r in caplog.records if r.name == "gateway.audit"]
    assert audit == [("", "jwt", 401), ("customer", "jwt", 403), ("", "jwt", 401), ("ops-lead", "jwt", 200), ("ops-lead", "jwt", 200)]


def test_admin_actions_under_auth_off_are_audited_as_the_admin_token(off, caplog):
    caplog.set_level(logging.INFO, logger="gateway.audit")
    response = off.post(f"/inventory/{PRODUCT}/adjustments", json={"delta": 1}, headers=admin_headers())
    assert response.status_code == 200
    (record,) = [r for r in caplog.records if r.name == "gateway.audit"]
    assert (record.subject, record.credential, record.status) == ("", "admin_token", 200)


# AUTH=off: the original design


def test_auth_off_takes_customer_id_from_the_request_and_anyone_reads_anything(off):
    order = placed(off, {}, customer_id="C-off")
    assert off.get(f"/orders/{order['id']}").status_code == 200
    assert off.get(f"/payments/{order['payment_id']}").status_code == 200
    assert order["id"] in [o["id"] for o in off.get("/orders?customer_id=C-off").get_json()["orders"]]
    method = off.post("/payment_methods", json=card()).get_json()["id"]
    assert off.get(f"/payment_methods/{method}").status_code == 200
    assert off.delete(f"/orders/{order['id']}").get_json()["status"] == "CANCELLED"


# What travels to the services


def test_the_verified_identity_travels_as_metadata_and_nothing_with_auth_off(sqlite_url):
    with running_backends(sqlite_url) as scripted:
        orders = scripted.scripted_orders
        make_client(scripted, auth=HS256).get("/orders/ord_1", headers=bearer(hs("C7", (ADMIN_SCOPE, "shop:x", "email"))))
        metadata = orders.calls[-1][2]
        assert (metadata["x-shop-subject"], metadata["x-shop-scopes"]) == ("C7", "shop:admin shop:x")
        make_client(scripted, auth=HS256).get("/orders/ord_1", headers=bearer(hs("C8")))
        assert orders.calls[-1][2]["x-shop-subject"] == "C8" and "x-shop-scopes" not in orders.calls[-1][2]
        # Headers of the same names from a client never reach a service.
        make_client(scripted).get("/orders/ord_1", headers={"x-shop-subject": "C9", "x-shop-scopes": ADMIN_SCOPE})
        assert not {"x-shop-subject", "x-shop-scopes"} & set(orders.calls[-1][2])


# OpenAPI: secured exactly where a request without credentials is refused


@pytest.mark.parametrize("mode", ["off", "jwt"])
def test_openapi_declares_the_bearer_scheme_exactly_where_credentials_are_needed(backends, mode):
    client = make_client(backends, auth=HS256) if mode == "jwt" else make_client(backends)
    document = client.get("/openapi.json").get_json()
    scheme = "bearerJwt" if mode == "jwt" else "adminToken"
    assert set(document["components"]["securitySchemes"]) == {scheme}
    secured = set()
    for path, operations in document["paths"].items():
        for verb, operation in operations.items():
            concrete = path.replace("{", "").replace("}", "")
            body = {} if "requestBody" in operation else None
            answer = client.open(concrete, method=verb.upper(), json=body)
            if "security" in operation:
                assert operation["security"] == [{scheme: []}]
                secured.add((verb, path))
                # A secured operation refuses a request without credentials.
                assert answer.status_code in (401, 403), (verb, path, answer.status_code)
            else:
                assert answer.status_code not in (401, 403), (verb, path, answer.status_code)
    admin_ops = {("put", "/inventory/{product_id}"), ("post", "/inventory/{product_id}/adjustments")}
    if mode == "off":
        assert secured == admin_ops
    else:
        assert admin_ops < secured
        assert ("get", "/orders/{order_id}") in secured and ("post", "/payment_methods") in secured
        assert not {op for op in secured if op[1].startswith(("/inventory", "/health", "/metrics", "/mesh"))} - admin_ops


# The README's AUTH=jwt tour, verbatim, and python -m gateway.token


def readme_jwt_tour() -> list[str]:
    """The commands of the README's second block under "Identity (AUTH=jwt)",
    continuation lines joined."""
    text = (Path(ROOT) / "README.md").read_text()
    section = text.split("## Identity (AUTH=jwt)", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n")[2].split("```", 1)[0]
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def test_the_readme_jwt_tour_answers_as_its_comments_say(backends, monkeypatch, capsys):
    monkeypatch.setenv("AUTH_HS256_SECRET", SECRET)
    for name in ("AUTH_ISSUER", "AUTH_AUDIENCE", "AUTH_SUBJECT_CLAIM"):
        monkeypatch.delenv(name, raising=False)
    client = make_client(backends, auth=AuthConfig("jwt", hs256_secret=SECRET), admin_token="")
    tokens: dict[str, str] = {}
    order_id = ""
    commands = readme_jwt_tour()
    assert sum(c.startswith("curl") for c in commands) >= 10
    for command in commands:
        assignment = re.fullmatch(r"(\w+)=\$\(\.venv/bin/python -m gateway\.token (.*)\)", command)
        if assignment:
            assert token_main(shlex.split(assignment.group(2))) == 0
            tokens["$" + assignment.group(1)] = capsys.readouterr().out.strip()
            continue
        response = curl(client, command, ORDER_ID=order_id, **tokens)
        expected = re.search(r"#\s*(\d{3})\b", command)
        assert response.status_code == (int(expected.group(1)) if expected else 200), (command, response.get_json())
        if "POST localhost:30080/orders" in command:
            order_id = response.get_json()["id"]
            assert response.get_json()["customer_id"] == "C123"
    assert order_id


def test_python_m_gateway_token_prints_a_token_the_gateway_takes(backends):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AUTH")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.token", "--sub", "C123", "--scope", ADMIN_SCOPE, "--ttl", "120"],
        env={**environ, "AUTH_HS256_SECRET": SECRET, "AUTH_ISSUER": ISSUER, "AUTH_AUDIENCE": AUDIENCE},
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert (decoded["sub"], decoded["scope"], decoded["exp"] - decoded["iat"]) == ("C123", ADMIN_SCOPE, 120)
    client = make_client(backends, auth=HS256)
    assert client.post(f"/inventory/{PRODUCT}/adjustments", json={"delta": 1}, headers=bearer(token)).status_code == 200


@pytest.mark.parametrize("secret, problem", [(None, "AUTH_HS256_SECRET is not set"), ("change-me-" + "x" * 30, "placeholder")])
def test_gateway_token_refuses_to_sign_without_a_real_secret(monkeypatch, capsys, secret, problem):
    monkeypatch.delenv("AUTH_HS256_SECRET", raising=False)
    if secret:
        monkeypatch.setenv("AUTH_HS256_SECRET", secret)
    with pytest.raises(SystemExit) as exit:
        token_main(["--sub", "C1"])
    assert exit.value.code == 2
    assert problem in capsys.readouterr().err


def test_the_bench_can_run_a_scenario_with_auth_jwt(backends):
    from bench.loadtools import LoadTool, hey_command
    from bench.runner import Bench
    from bench.scenarios import BENCH_CUSTOMER, JWT_SECRET, SCENARIOS

    bench = Bench(LoadTool("hey", "hey", ""), stack=None, workdir="", concurrency=1, auth="jwt")
    client = make_client(backends, auth=AuthConfig("jwt", hs256_secret=JWT_SECRET))
    assert placed(client, bench.customer_headers)["customer_id"] == BENCH_CUSTOMER
    response = client.post(f"/inventory/{PRODUCT}/adjustments", json={"delta": 1}, headers=bench.admin_headers)
    assert response.status_code == 200
    headers = bench.customer_headers
    command = hey_command(bench.tool, "http://x/orders/1", SCENARIOS["get-order"], 1, 1, 1, headers)
    assert command[-3:-1] == ["-H", f"Authorization: {headers['Authorization']}"]


# Verified tokens are remembered, briefly


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Every token PyJWT decodes (verifies in full)."""
    seen: list[str] = []
    decode = jwt.decode

    def counting(token, *args, **kwargs):
        seen.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr(gateway_auth.jwt, "decode", counting)
    return seen


def test_a_token_is_verified_once_then_remembered_until_it_expires_or_a_minute_passes(decodes):
    clock = Clock()
    verifier = gateway_auth.TokenVerifier(HS256, clock=clock)
    # Expired 50 s ago: taken within the leeway, for 10 s more.
    long_lived, short_lived = hs("rememberer", ttl_s=3600), hs("rememberer", ttl_s=-50)
    for _ in range(3):
        assert verifier.verify(long_lived).subject == "rememberer"
        verifier.verify(short_lived)
    assert decodes == [long_lived, short_lived]

    clock.now += 11  # past the short token's exp and leeway, not a minute
    verifier.verify(long_lived)
    verifier.verify(short_lived)  # checked in full again (PyJWT's clock is the real one)
    assert decodes[2:] == [short_lived]
    clock.now += gateway_auth.VERIFIED_MAX_AGE_S
    verifier.verify(long_lived)
    assert decodes[3:] == [long_lived]


def test_only_tokens_that_verify_are_remembered_and_the_memory_is_bounded(decodes, monkeypatch):
    monkeypatch.setattr(gateway_auth, "VERIFIED_CACHE_SIZE", 4)
    verifier = gateway_auth.TokenVerifier(HS256)
    bad = hs("forger") + "x"
    for _ in range(2):
        with pytest.raises(gateway_auth.InvalidToken):
            verifier.verify(bad)
    assert decodes == [bad, bad]
    tokens = [hs(f"many-{n}") for n in range(10)]
    for token in tokens:
        verifier.verify(token)
    verifier.verify(tokens[0])  # long forgotten: verified again
    verifier.verify(tokens[-1])  # remembered
    assert decodes[2:] == [*tokens, tokens[0]]
