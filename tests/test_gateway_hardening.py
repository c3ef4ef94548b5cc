"""The gateway's edge, hardened: placeholder secrets refused at start, metric
labels that stay bounded whatever methods and paths arrive, request ids
replaced unless clean, and payment methods that can never carry a card
number."""

import os
import random
import re
import string
import subprocess
import sys

import pytest

from gateway import metrics
from gateway.app import OTHER_METHOD, create_app
from gateway.config import AuthConfig, GatewayConfig, refuse_placeholder
from launcher.plan import local_credentials
from plumbing.config import ConfigError
from tests.harness import ROOT
from tests.test_gateway_support import assert_error, detail_of, gateway_config, make_client, running_backends

STRONG = "9c2e4b7a1f0d8e3c6b5a4f2e1d0c9b8a"

# Admin tokens and HS256 secrets: refused when short or a manifest's placeholder.
PLACEHOLDERS = ["change-me-admin-token", "change-me-" + "x" * 40, "short-token", "x" * 31]


@pytest.mark.parametrize("token", PLACEHOLDERS)
def test_a_placeholder_or_short_admin_token_is_refused(backends, token):
    with pytest.raises(ConfigError, match="ADMIN_TOKEN is a placeholder or shorter than 32 bytes") as info:
        create_app(gateway_config(backends, admin_token=token))
    assert token not in str(info.value)


def test_an_admin_token_of_32_bytes_is_taken(backends):
    client = make_client(backends, admin_token=STRONG)
    response = client.post("/inventory/P001/adjustments", json={"delta": 1}, headers={"Authorization": f"Bearer {STRONG}"})
    assert response.status_code == 200


def test_the_gateway_process_refuses_to_start_with_a_placeholder_admin_token():
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH", "ADMIN_TOKEN"))}
    environ["ADMIN_TOKEN"] = "change-me-admin-token"
    result = subprocess.run(
        [sys.executable, "-m", "gateway"], env=environ, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "refusing to start: ADMIN_TOKEN is a placeholder" in result.stderr
    assert "change-me-admin-token" not in result.stderr


@pytest.mark.parametrize("secret", PLACEHOLDERS)
def test_a_placeholder_or_short_jwt_secret_is_refused(secret):
    with pytest.raises(ConfigError, match="AUTH_HS256_SECRET is a placeholder or shorter than 32 bytes"):
        AuthConfig(mode="jwt", hs256_secret=secret).validate()


@pytest.mark.parametrize(
    "auth, problem",
    [
        (AuthConfig(mode="jwt"), "needs exactly one of AUTH_JWKS_URL"),
        (AuthConfig(mode="jwt", jwks_url="https://idp.example/jwks", hs256_secret=STRONG), "needs exactly one"),
        (AuthConfig(mode="jwt", jwks_url="file:///etc/keys.json"), "must be an https://"),
        (AuthConfig(mode="basic"), "AUTH='basic' must be off or jwt"),
    ],
)
def test_unusable_auth_settings_are_refused(auth, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        auth.validate()


def test_auth_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("AUTH", "JWT")
    monkeypatch.setenv("AUTH_HS256_SECRET", STRONG)
    monkeypatch.setenv("AUTH_ISSUER", "https://idp.example/")
    monkeypatch.setenv("AUTH_AUDIENCE", "shop")
    monkeypatch.setenv("AUTH_SUBJECT_CLAIM", "customer_id")
    monkeypatch.setenv("ADMIN_TOKEN", "short")  # ignored with AUTH=jwt: not refused
    config = GatewayConfig.from_env()
    assert config.auth == AuthConfig("jwt", "", STRONG, "https://idp.example/", "shop", "customer_id")


def test_auth_off_warns_at_start_and_jwt_warns_that_admin_token_is_ignored(backends):
    off = gateway_config(backends)
    assert [w for w in off.start_warnings() if w.startswith("AUTH=off: customer_id is whatever the request says")]
    jwt = gateway_config(backends, auth=AuthConfig(mode="jwt", hs256_secret=STRONG))
    assert jwt.start_warnings() == ["AUTH=jwt: ADMIN_TOKEN is ignored; admin routes take a token with the shop:admin scope"]
    assert gateway_config(backends, admin_token="", auth=jwt.auth).start_warnings() == []


def _request_series() -> set[tuple[str, str]]:
    return {
        (sample.labels["route"], sample.labels["method"])
        for metric in metrics.http_requests.collect()
        for sample in metric.samples
        if sample.name == "gateway_http_requests_total"
    }


def test_metric_labels_stay_bounded_after_a_thousand_random_methods_and_paths(backends):
    app = create_app(gateway_config(backends, rate_limit="100/minute"))
    gateway = app.extensions["shop_gateway"]
    client = app.test_client()
    rng = random.Random(12)
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND"]
    statuses = []
    for _ in range(1000):
        method = rng.choice(methods + ["".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12)))])
        path = "/" + "/".join(
            "".join(rng.choices(string.ascii_letters + string.digits + "-_.~", k=rng.randint(1, 16)))
            for _ in range(rng.randint(1, 4))
        )
        statuses.append(client.open(path, method=method).status_code)

    routes = set(gateway.routes.values()) | {metrics.UNMATCHED_ROUTE}
    allowed_methods = set(gateway.methods) | {OTHER_METHOD}
    series = _request_series()
    assert {route for route, _ in series} <= routes
    assert {method for _, method in series} <= allowed_methods
    assert len(series) <= len(routes) * len(allowed_methods)
    # Unknown routes spend the budget too: past 100 requests, probing is refused.
    assert statuses.count(429) == 900


def test_a_bad_request_id_is_replaced_and_the_replacement_is_what_travels(client, orders):
    response = client.get("/orders/ord_1", headers={"X-Request-ID": 'forged" level="ERROR'})
    replaced = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", replaced)
    assert orders.calls[-1][2]["x-request-id"] == replaced


@pytest.mark.parametrize("payment_method", ["4242424242424242", "4242 4242 4242 4242", "card-4242424242424242"])
def test_a_card_number_like_payment_method_answers_400_and_leaves_no_order(sqlite_url, payment_method):
    with running_backends(sqlite_url, real_orders=True) as real:
        client = make_client(real)
        body = {"customer_id": "C123", "items": [{"product_id": "P001", "quantity": 1}], "payment_method": payment_method}
        # A request id of our own: a random one may hold "4242" by chance.
        response = client.post("/orders", json=body, headers={"X-Request-ID": "req-card-check"})
        error = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
        (violation,) = detail_of(error, "google.rpc.BadRequest")["field_violations"]
        assert violation["field"] == "payment_method"
        assert "4242" not in response.get_data(as_text=True)
        assert client.get("/orders?customer_id=C123").get_json()["orders"] == []



def test_make_run_makes_a_random_local_admin_token_when_none_is_set():
    environ = {"AUTH": "off"}
    (line,) = local_credentials(environ)
    token = environ["ADMIN_TOKEN"]
    assert re.fullmatch(r"[0-9a-f]{64}", token) and f"export ADMIN_TOKEN={token}" in line
    refuse_placeholder("ADMIN_TOKEN", token)  # what the gateway will check: no error
    other = {}
    local_credentials(other)
    assert other["ADMIN_TOKEN"] != token


def test_make_run_keeps_an_admin_token_that_is_set():
    environ = {"ADMIN_TOKEN": STRONG}
    local_credentials(environ)
    assert environ == {"ADMIN_TOKEN": STRONG}


def test_make_run_with_auth_jwt_says_how_to_get_a_token():
    environ = {"AUTH": "jwt"}
    lines = local_credentials(environ)
    secret = environ["AUTH_HS256_SECRET"]
    refuse_placeholder("AUTH_HS256_SECRET", secret)
    assert "ADMIN_TOKEN" not in environ
    assert any(f"export AUTH_HS256_SECRET={secret}" in line for line in lines)
    assert any("-m gateway.token --sub C123)" in line for line in lines)
    assert any("--scope shop:admin" in line for line in lines)
    assert any(line.endswith(" localhost:30080/orders") for line in lines)
    assert local_credentials({"AUTH": "jwt", "GATEWAY_PORT": "37080"})[-1].endswith(" localhost:37080/orders")
    with_provider = {"AUTH": "jwt", "AUTH_JWKS_URL": "https://idp.example/jwks"}
    (line,) = local_credentials(with_provider)
    assert "identity provider" in line and "AUTH_HS256_SECRET" not in with_provider
