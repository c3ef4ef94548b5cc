"""The monitoring component (k8s/components/monitoring): it renders with the
base and validates, scrapes what the pods declare, alerts on what the issue
of an operator asks (5xx ratio, order p99, stuck orders, declines, a service
not SERVING), and every metric its alerts and dashboard query is exported by
a running shop once it has seen one order of each outcome."""

import json
import re
import urllib.request

import pytest
import yaml

from launcher.stack import Stack, http, plan_stack
from tests.test_k8s_manifests import declared_ports, objects, render_with, validate_strictly

COMPONENT = "monitoring"
ADMIN_TOKEN = "monitoring-test-admin-token-0123456789abcdef"


def _keyed(rendered_text: str) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(rendered_text) if o}


def component_objects() -> dict[tuple[str, str], dict]:
    """(kind, name) -> object, of what the component adds to the base."""
    base = _keyed(render_with())
    return {key: o for key, o in _keyed(render_with(COMPONENT)).items() if key not in base}


def alert_rules() -> dict[str, dict]:
    rule = component_objects()[("PrometheusRule", "shop")]
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def dashboard() -> dict:
    config_map = component_objects()[("ConfigMap", "shop-grafana-dashboard")]
    (text,) = config_map["data"].values()
    return json.loads(text)


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


# --- PromQL, as far as naming metrics goes ------------------------------------

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
             "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not
    functions, keywords, label names, durations or Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges, subqueries, $__rate_interval
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.$])[A-Za-z_:][\w:]*", expr):
        follows = expr[match.end() :].lstrip()
        if match.group() not in _KEYWORDS and not follows.startswith("("):
            names.add(match.group())
    return names


def test_metric_names_are_read_from_promql_as_prometheus_would():
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(http_seconds_bucket{route=~"/orders|x"}[5m] offset 1h)))'
        " / on (route) group_left (pod) max without (pod) (up_total) > bool 2 and sum(rate(b[$__rate_interval]))"
    )
    assert metric_names(expr) == {"http_seconds_bucket", "up_total", "b"}


# --- the component -------------------------------------------------------------


def test_the_component_renders_with_the_base_and_validates_strictly(tmp_path):
    # Only the Prometheus Operator's own kinds have no built-in schema.
    assert validate_strictly(render_with(COMPONENT), tmp_path) == ["PodMonitor", "PrometheusRule"]


def test_what_the_component_adds_lives_in_the_shop_namespace():
    added = component_objects()
    assert set(added) == {("PodMonitor", "shop"), ("PrometheusRule", "shop"), ("ConfigMap", "shop-grafana-dashboard")}
    for obj in added.values():
        assert obj["metadata"]["namespace"] == "shop"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "shop"


def test_the_pod_monitor_scrapes_every_app_on_the_port_its_annotations_name():
    monitor = component_objects()[("PodMonitor", "shop")]
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    assert (expression["key"], expression["operator"]) == ("app", "In")
    endpoints = {e["port"]: e["path"] for e in monitor["spec"]["podMetricsEndpoints"]}
    for name, workload in objects("Deployment").items():
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        scraped = name in expression["values"]
        assert scraped == (annotations.get("prometheus.io/scrape") == "true"), name
        if scraped:
            port = int(annotations["prometheus.io/port"])
            names = [n for n, p in declared_ports(workload).items() if p == port and not n.isdigit()]
            assert any(endpoints.get(n) == annotations["prometheus.io/path"] for n in names), name


def test_the_grafana_sidecar_finds_the_dashboard_by_its_label():
    config_map = component_objects()[("ConfigMap", "shop-grafana-dashboard")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard()["uid"] == "shop-overview"


@pytest.mark.parametrize(
    "alert, metric",
    [
        ("ShopGateway5xxRatioHigh", "gateway_http_requests_total"),
        ("ShopOrderLatencyP99High", "gateway_http_request_duration_seconds_bucket"),
        ("ShopOrderStuckPending", "shop_oldest_pending_order_age_seconds"),
        ("ShopPaymentFailureRatioHigh", "shop_payments_total"),
        ("ShopServiceNotServing", "shop_grpc_serving"),
    ],
)
def test_each_alert_an_operator_needs_is_there_with_a_severity_and_a_summary(alert, metric):
    rule = alert_rules()[alert]
    assert metric_names(rule["expr"]) == {metric}
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert rule["annotations"]["summary"]
    assert re.fullmatch(r"\d+[smh]", rule["for"])


def test_the_stuck_order_alert_fires_past_60_seconds():
    assert alert_rules()["ShopOrderStuckPending"]["expr"].strip().endswith("> 60")


@pytest.mark.parametrize(
    "title, metric",
    [
        ("Orders/s by outcome", "shop_orders_total"),
        ("Latency p50 by route", "gateway_http_request_duration_seconds_bucket"),
        ("Latency p99 by route", "gateway_http_request_duration_seconds_bucket"),
        ("Upstream errors by service and code", "grpc_client_handled_total"),
        ("Rate-limited requests", "gateway_rate_limited_requests_total"),
        ("Oldest PENDING order", "shop_oldest_pending_order_age_seconds"),
    ],
)
def test_the_dashboard_shows_what_an_operator_asks_first(title, metric):
    (panel,) = [p for p in dashboard()["panels"] if p["title"] == title]
    assert set().union(*(metric_names(t["expr"]) for t in panel["targets"])) == {metric}


def test_dashboard_panels_do_not_overlap():
    cells = set()
    for panel in dashboard()["panels"]:
        box = panel["gridPos"]
        mine = {(x, y) for x in range(box["x"], box["x"] + box["w"]) for y in range(box["y"], box["y"] + box["h"])}
        assert not mine & cells, panel["title"]
        assert box["x"] + box["w"] <= 24
        cells |= mine


# --- against a running shop ----------------------------------------------------


def exported_names(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


@pytest.mark.e2e
def test_every_metric_the_alerts_and_the_dashboard_query_is_exported(tmp_path):
    queried = set().union(*map(metric_names, [r["expr"] for r in alert_rules().values()] + dashboard_queries()))
    assert len(queried) >= 10  # the parsing found them all (each panel's and alert's own tests pin some)
    environ = {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "RATE_LIMIT": "12/minute",
        "LOG_LEVEL": "WARNING",
        "DATA_DIR": str(tmp_path / "data"),
    }
    stack = Stack(plan_stack(1, environ), log_dir=str(tmp_path)).start()
    try:
        (gateway,) = stack.gateway_urls()

        def order(**changes):
            body = {"customer_id": "C-metrics", "items": [{"product_id": "P002", "quantity": 1}]} | changes
            return http("POST", f"{gateway}/orders", body)

        status, _, confirmed = order()
        assert status == 201, confirmed
        assert order(payment_method="tok_chargeDeclined")[0] == 402  # PAYMENT_FAILED
        assert order(items=[{"product_id": "P002", "quantity": 1000}])[0] == 409  # FAILED (out of stock)
        assert http("DELETE", f"{gateway}/orders/{confirmed['id']}")[0] == 200  # CANCELLED
        adjusted = http(
            "POST",
            f"{gateway}/inventory/P002/adjustments",
            {"delta": 3, "reason": "restock"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert adjusted[0] == 200, adjusted
        assert http("GET", f"{gateway}/orders/ord_unknown")[0] == 404  # an upstream error code
        statuses = [http("GET", f"{gateway}/inventory")[0] for _ in range(12)]
        assert 429 in statuses
        exported = exported_names(f"{gateway}/metrics")
        for spec in stack.specs:
            if spec.metrics_port:
                exported |= exported_names(f"http://127.0.0.1:{spec.metrics_port}/metrics")
    finally:
        stack.stop()
    assert queried - exported == set()
