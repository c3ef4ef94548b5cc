"""The Kubernetes manifests (k8s/), as `kubectl apply -k k8s/` would send them.

Rendered once with `kubectl kustomize k8s`, checked against the API schemas of
Kubernetes 1.32 (`kubernetes-validate --strict`), then against the rules a
schema cannot see: probes, limits and the hardened securityContext on every
container; Services that select real pods and target declared ports; env
addresses that agree with the Services; NetworkPolicies that allow exactly the
call graph. All offline: kubectl and the schemas come from PyPI packages.
"""

import base64
import functools
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
NAMESPACE = "shop"

GRPC_SERVICES = {
    # Deployment/Service name -> (ServerConfig name, gRPC service, port, metrics port)
    "inventory-service": ("inventory", "shop.inventory.v1.InventoryService", 50051, 9101),
    "payment-service": ("payment", "shop.payment.v1.PaymentService", 50052, 9102),
    "order-service": ("order", "shop.order.v1.OrderService", 50053, 9103),
}
APPS = ["api-gateway", *GRPC_SERVICES]
IMAGES = {name: f"{name}:latest" for name in APPS}
APP_UID = 10001


# ---------------------------------------------------------------- rendering


def _tool(name: str) -> str:
    """The pinned copy in this venv (requirements-dev.txt) first, then PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: pip install -r requirements-dev.txt")
    return found


def _kustomize(directory: Path) -> str:
    result = subprocess.run(
        [_tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return result.stdout


@functools.cache
def _rendered_text(path: Path = K8S) -> str:
    """`kubectl kustomize` of k8s/ (or of an overlay on it)."""
    return _kustomize(path)


@functools.cache
def render_with(*components: str) -> str:
    """k8s/ with components (names under k8s/components), as an overlay of a
    user's own, outside this repository, renders them (kustomize wants
    relative paths)."""
    with tempfile.TemporaryDirectory() as overlay:
        relative = lambda path: os.path.relpath(path, overlay)  # noqa: E731
        (Path(overlay) / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "resources": [relative(K8S)],
                    "components": [relative(K8S / "components" / name) for name in components],
                }
            )
        )
        return _kustomize(Path(overlay))


def validate_strictly(rendered_text: str, directory: Path) -> list[str]:
    """kubernetes-validate --strict against Kubernetes 1.32; the kinds it has
    no schema for (custom resources), which it only warns about."""
    rendered = directory / "rendered.yaml"
    rendered.write_text(rendered_text)
    result = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", "1.32.0", "--quiet", str(rendered)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return sorted(set(re.findall(r"Couldn't find schema for kind (\w+)", result.stdout + result.stderr)))


@functools.cache
def _objects(path: Path = K8S) -> tuple[dict, ...]:
    return tuple(doc for doc in yaml.safe_load_all(_rendered_text(path)) if doc)


def objects(kind: str, path: Path = K8S) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in _objects(path) if o["kind"] == kind}


def workloads(path: Path = K8S) -> dict[str, dict]:
    return {**objects("Deployment", path), **objects("StatefulSet", path)}


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def containers():
    """(workload, container) for every container, init containers included."""
    for workload in workloads().values():
        spec = pod_spec(workload)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield workload, container


CONTAINER_IDS = sorted(f"{w['metadata']['name']}/{c['name']}" for w, c in containers())


def container(container_id: str) -> tuple[dict, dict]:
    for workload, c in containers():
        if f"{workload['metadata']['name']}/{c['name']}" == container_id:
            return workload, c
    raise KeyError(container_id)


def app_container(name: str, path: Path = K8S) -> dict:
    (c,) = [c for c in pod_spec(workloads(path)[name])["containers"] if c["name"] == name]
    return c


def declared_ports(workload: dict) -> dict[str, int]:
    """name (or str(number)) -> containerPort, over every container of the pod."""
    ports = {}
    for c in pod_spec(workload)["containers"]:
        for p in c.get("ports", []):
            ports[str(p["containerPort"])] = p["containerPort"]
            if "name" in p:
                ports[p["name"]] = p["containerPort"]
    return ports


def resolve_port(workload: dict, port) -> int:
    ports = declared_ports(workload)
    assert str(port) in ports, f"{workload['metadata']['name']} declares no container port {port!r}"
    return ports[str(port)]


def config_data(name: str, path: Path = K8S) -> dict[str, str]:
    return objects("ConfigMap", path)[name].get("data", {})


def secret_data(name: str, path: Path = K8S) -> dict[str, str]:
    secret = objects("Secret", path)[name]
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


def container_env(c: dict, path: Path = K8S) -> dict[str, str]:
    """The env a container starts with, as the kubelet builds it: envFrom in
    order, then env, with $(VAR) expanded from what is defined before it."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_data(source["configMapRef"]["name"], path))
        if "secretRef" in source:
            env.update(secret_data(source["secretRef"]["name"], path))
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(
                r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                var["value"],
            )
            continue
        source = var["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[var["name"]] = config_data(ref["name"], path)[ref["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = secret_data(ref["name"], path)
            if ref["key"] in data or not ref.get("optional"):
                env[var["name"]] = data[ref["key"]]
    return env


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels / matchExpressions, or a plain map as a
    Service has) against a set of labels."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def service_workload(service: dict) -> dict:
    selector = service["spec"].get("selector") or {}
    assert selector, f"Service {service['metadata']['name']} has no selector"
    matched = [w for w in workloads().values() if selects(selector, pod_labels(w))]
    assert len(matched) == 1, (
        f"Service {service['metadata']['name']} selects the pods of "
        f"{[w['metadata']['name'] for w in matched]}, not exactly one workload"
    )
    return matched[0]


# ------------------------------------------------------------- the schemas


def test_manifests_validate_strictly_against_kubernetes_1_32(tmp_path):
    # Every kind is a built-in one: nothing goes unchecked.
    assert validate_strictly(_rendered_text(), tmp_path) == []


def test_everything_lives_in_the_shop_namespace():
    (namespace,) = objects("Namespace").values()
    assert namespace["metadata"]["name"] == NAMESPACE
    for obj in _objects():
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"


def test_the_namespace_enforces_the_restricted_pod_security_standard():
    labels = objects("Namespace")[NAMESPACE]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# ------------------------------------- names, labels and the README commands


def test_deployments_and_services_keep_the_original_names():
    assert set(APPS) <= set(objects("Deployment"))
    assert set(APPS) <= set(objects("Service"))


@pytest.mark.parametrize("name", APPS)
def test_app_label_selects_the_pods_for_kubectl_logs(name):
    deployment = objects("Deployment")[name]
    assert deployment["spec"]["selector"] == {"matchLabels": {"app": name}}
    assert pod_labels(deployment)["app"] == name
    assert deployment["metadata"]["labels"]["app"] == name


def test_tier_backend_is_exactly_the_three_grpc_services():
    # `kubectl logs -l tier=backend --all-containers=true` shows those three.
    backend = {name for name, w in workloads().items() if pod_labels(w).get("tier") == "backend"}
    assert backend == set(GRPC_SERVICES)


@pytest.mark.parametrize("name", APPS)
def test_images_are_the_local_builds_pulled_only_if_absent(name):
    c = app_container(name)
    assert c["image"] == IMAGES[name]
    assert c["imagePullPolicy"] == "IfNotPresent"


def test_every_container_pulls_only_if_absent():
    for workload, c in containers():
        assert c.get("imagePullPolicy") == "IfNotPresent", f"{workload['metadata']['name']}/{c['name']}"


@pytest.mark.parametrize("name", APPS)
def test_deployments_run_two_replicas_and_roll_without_losing_one(name):
    spec = objects("Deployment")[name]["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] >= 1


def test_gateway_is_on_node_port_30080_keeping_client_ips():
    spec = objects("Service")["api-gateway"]["spec"]
    assert spec["type"] == "NodePort"
    # Local: no SNAT, so the rate limit sees each client's own address.
    assert spec["externalTrafficPolicy"] == "Local"
    (port,) = spec["ports"]
    assert (port["port"], port["nodePort"]) == (8080, 30080)
    assert resolve_port(workloads()["api-gateway"], port["targetPort"]) == 8080


@pytest.mark.parametrize("name", GRPC_SERVICES)
def test_grpc_services_are_headless_for_client_side_round_robin(name):
    spec = objects("Service")[name]["spec"]
    assert spec["clusterIP"] == "None"
    assert [p["port"] for p in spec["ports"]] == [GRPC_SERVICES[name][2]]


# ----------------------------------------------------- every container


@pytest.mark.parametrize("container_id", CONTAINER_IDS)
def test_every_container_has_readiness_and_liveness_probes(container_id):
    workload, c = container(container_id)
    for kind in ("readinessProbe", "livenessProbe"):
        probe = c.get(kind)
        assert probe, f"{container_id} has no {kind}"
        for action in ("grpc", "httpGet", "tcpSocket"):
            if action in probe:
                resolve_port(workload, probe[action]["port"])


@pytest.mark.parametrize("name", GRPC_SERVICES)
def test_grpc_services_use_native_grpc_probes_on_their_grpc_port(name):
    c = app_container(name)
    port = GRPC_SERVICES[name][2]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[kind]["grpc"]["port"] == port, kind
        assert c[kind]["grpc"].get("service", "") in ("", GRPC_SERVICES[name][1]), kind
    # Readiness asks about the service itself, which turns NOT_SERVING on SIGTERM.
    assert c["readinessProbe"]["grpc"]["service"] == GRPC_SERVICES[name][1]


def test_gateway_probes_health_not_ready():
    # A payment outage must not take the gateway (and so browsing) out of the Service.
    c = app_container("api-gateway")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[kind]["httpGet"]["path"] == "/health", kind
        assert resolve_port(workloads()["api-gateway"], c[kind]["httpGet"]["port"]) == 8080


@pytest.mark.parametrize("container_id", CONTAINER_IDS)
def test_every_container_has_requests_and_limits(container_id):
    _, c = container(container_id)
    resources = c.get("resources", {})
    for bound in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            assert resource in resources.get(bound, {}), f"{container_id}: no {bound}.{resource}"
    assert _quantity(resources["requests"]["cpu"]) <= _quantity(resources["limits"]["cpu"])
    assert _quantity(resources["requests"]["memory"]) <= _quantity(resources["limits"]["memory"])


def _quantity(q) -> float:
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    number, suffix = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q)).groups()
    return float(number) * suffixes.get(suffix, 1)


@pytest.mark.parametrize("container_id", CONTAINER_IDS)
def test_every_container_is_hardened(container_id):
    workload, c = container(container_id)
    pod_sc = pod_spec(workload).get("securityContext", {})
    sc = c.get("securityContext", {})
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
    assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0
    assert sc.get("readOnlyRootFilesystem") is True
    assert sc.get("allowPrivilegeEscalation") is False
    assert sc.get("privileged", False) is False
    assert sc.get("capabilities", {}).get("drop") == ["ALL"]
    assert not sc.get("capabilities", {}).get("add")
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
    assert seccomp.get("type") == "RuntimeDefault"


@pytest.mark.parametrize("name", sorted(workloads()))
def test_every_pod_has_its_own_service_account_without_a_token(name):
    spec = pod_spec(workloads()[name])
    assert spec.get("serviceAccountName") == name
    assert spec.get("automountServiceAccountToken") is False
    account = objects("ServiceAccount")[name]
    assert account.get("automountServiceAccountToken") is False
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")


@pytest.mark.parametrize("container_id", CONTAINER_IDS)
def test_writable_paths_are_empty_dirs_or_claims(container_id):
    workload, c = container(container_id)
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
    writable = set()
    for mount in c.get("volumeMounts", []):
        if mount.get("readOnly"):
            continue
        volume = volumes.get(mount["name"])
        assert mount["name"] in claims or (volume and "emptyDir" in volume), (
            f"{container_id}: {mount['mountPath']} is writable but neither an emptyDir nor a claim"
        )
        writable.add(mount["mountPath"])
    if workload["metadata"]["name"] in (*APPS, "postgres"):
        # Python, granian and PostgreSQL all want a scratch /tmp.
        assert "/tmp" in writable
    multiproc = container_env(c).get("PROMETHEUS_MULTIPROC_DIR")
    if multiproc:
        assert multiproc in writable, f"{container_id}: PROMETHEUS_MULTIPROC_DIR is not a volume"


@pytest.mark.parametrize("name", APPS)
def test_termination_grace_outlasts_the_drain(name):
    workload = workloads()[name]
    grace = pod_spec(workload).get("terminationGracePeriodSeconds", 30)
    for c in pod_spec(workload)["containers"]:
        env = container_env(c)
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        drain = float(env.get("DRAIN_DELAY_S", 0)) + float(env.get("SHUTDOWN_GRACE_S", 10))
        if name == "api-gateway":
            # granian lets requests in flight finish: within the upstream deadline.
            drain = max(drain, float(env.get("UPSTREAM_TIMEOUT_S", 10)))
        assert grace > pre_stop + drain, f"{name}: {grace}s <= {pre_stop} + {drain}"


def test_gateway_waits_for_the_endpoint_to_go_before_stopping():
    c = app_container("api-gateway")
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] >= 3


@pytest.mark.parametrize("name", APPS)
def test_prometheus_scrapes_a_declared_port(name):
    workload = objects("Deployment")[name]
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    port = int(annotations["prometheus.io/port"])
    assert port in declared_ports(workload).values()
    if name in GRPC_SERVICES:
        assert port == GRPC_SERVICES[name][3] == declared_ports(workload)["metrics"]


# ---------------------------------------------- Services and env agree


@pytest.mark.parametrize("name", sorted(objects("Service")))
def test_every_service_selects_one_workload_and_targets_a_declared_port(name):
    service = objects("Service")[name]
    workload = service_workload(service)
    for port in service["spec"]["ports"]:
        target = resolve_port(workload, port.get("targetPort", port["port"]))
        if service["spec"].get("clusterIP") == "None":
            # Headless: clients dial the pod itself, on the Service's port.
            assert target == port["port"], f"{name}: headless port {port['port']} != container {target}"


def _target(address: str) -> tuple[str, int]:
    """dns:///host:port, dns://authority/host:port or host:port -> (host, port)."""
    address = re.sub(r"^dns:(//[^/]*)?/", "", address)
    host, _, port = address.rpartition(":")
    return host, int(port)


def _service_port(host: str, port: int) -> dict:
    """The Service a cluster address names, checked to serve that port on
    pods that declare it."""
    name = host.removesuffix(".svc.cluster.local").removesuffix(".svc").removesuffix(f".{NAMESPACE}")
    assert name in objects("Service"), f"no Service {name!r} for address {host}:{port}"
    service = objects("Service")[name]
    ports = [p for p in service["spec"]["ports"] if p["port"] == port]
    assert ports, f"Service {name} has no port {port}"
    resolve_port(service_workload(service), ports[0].get("targetPort", port))
    return service


def _every_env():
    for workload, c in containers():
        yield workload["metadata"]["name"], c, container_env(c)


def test_every_env_reference_resolves():
    for name, _, env in _every_env():
        for key, value in env.items():
            assert "$(" not in value, f"{name}: {key}={value} refers to an undefined variable"


def test_grpc_addresses_name_headless_services_on_their_ports():
    seen = 0
    for name, _, env in _every_env():
        for key in ("INVENTORY_ADDR", "PAYMENT_ADDR", "ORDER_ADDR"):
            if key not in env:
                continue
            seen += 1
            assert env[key].startswith("dns:///"), f"{name}: {key}={env[key]} (round_robin needs dns:///)"
            service = _service_port(*_target(env[key]))
            assert service["metadata"]["name"] == f"{key.removesuffix('_ADDR').lower()}-service"
            assert service["spec"].get("clusterIP") == "None", f"{key} names a Service that is not headless"
    assert seen >= 3


@pytest.mark.parametrize("name", GRPC_SERVICES)
def test_grpc_service_listens_where_its_service_and_probes_point(name, monkeypatch):
    from plumbing.config import ServerConfig

    config_name, _, port, metrics_port = GRPC_SERVICES[name]
    config = _load(monkeypatch, app_container(name), lambda: ServerConfig.from_env(config_name))
    workload = objects("Deployment")[name]
    assert config.port == port == declared_ports(workload)["grpc"]
    assert config.metrics_port == metrics_port == declared_ports(workload)["metrics"]
    assert config.log.format == "json"


@pytest.mark.parametrize("name", GRPC_SERVICES)
def test_each_service_has_its_own_postgresql_database_and_role(name, monkeypatch):
    from plumbing.config import ServerConfig

    config_name = GRPC_SERVICES[name][0]
    config = _load(monkeypatch, app_container(name), lambda: ServerConfig.from_env(config_name))
    url = urlsplit(config.database_url)
    assert url.scheme == "postgresql"
    _service_port(url.hostname, url.port)
    assert url.path == f"/{config_name}" and url.username == config_name
    assert url.password == secret_data("shop-secrets")[f"{config_name.upper()}_DB_PASSWORD"]
    # ... and the database exists: the init script creates one per service.
    script = config_data(_init_configmap())["init-databases.sh"]
    assert re.search(rf"for service in [^\n]*\b{config_name}\b", script)


def test_gateway_config_loads_and_shares_its_rate_limit_in_redis(monkeypatch):
    from gateway.config import GatewayConfig

    # The JWT secret is what an overlay supplies (the base's is refused, below).
    config = _load(monkeypatch, app_container("api-gateway"), GatewayConfig.from_env, AUTH_HS256_SECRET=REAL_SECRET)
    assert config.port == declared_ports(objects("Deployment")["api-gateway"])["http"]
    # One worker for the pod's one CPU; replicas share one budget in Redis.
    assert config.workers == 1
    url = urlsplit(config.rate_limit_storage)
    assert url.scheme == "redis"
    assert objects("Service")[_service_port(url.hostname, url.port)["metadata"]["name"]]
    assert config.trusted_proxies == 0  # externalTrafficPolicy: Local, no proxy hop
    # Customers see only their own orders; admin is a token scope, not ADMIN_TOKEN.
    assert (config.auth.mode, config.auth.hs256_secret, config.admin_token) == ("jwt", REAL_SECRET, "")


REAL_SECRET = "5d0f8a3e9b1c7e2a4f6d8b0c3e5a7f9d"


def test_the_gateway_refuses_to_start_with_the_base_manifests_placeholder_secret(monkeypatch):
    from gateway.config import GatewayConfig
    from plumbing.config import ConfigError

    with pytest.raises(ConfigError, match="AUTH_HS256_SECRET is a placeholder"):
        _load(monkeypatch, app_container("api-gateway"), GatewayConfig.from_env)


def _overlay(tmp_path: Path, secrets: dict[str, str], config: dict[str, str]) -> Path:
    """The overlay README.md ("Set the secrets") shows, with these values."""
    (tmp_path / "secrets.env").write_text("".join(f"{k}={v}\n" for k, v in secrets.items()))
    kustomization = {
        "resources": [os.path.relpath(K8S, tmp_path)],
        "secretGenerator": [
            {
                "name": "shop-secrets",
                "namespace": NAMESPACE,
                "behavior": "replace",
                "envs": ["secrets.env"],
                "options": {"disableNameSuffixHash": True},
            }
        ],
    }
    if config:
        kustomization["configMapGenerator"] = [
            {"name": "shop-config", "namespace": NAMESPACE, "behavior": "merge", "literals": [f"{k}={v}" for k, v in config.items()]}
        ]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return tmp_path


DB_PASSWORDS = {f"{n}_PASSWORD": "a1b2c3" for n in ("POSTGRES", "INVENTORY_DB", "PAYMENT_DB", "ORDER_DB")}


@pytest.mark.parametrize(
    "secrets, config, keys",
    [
        ({"AUTH_HS256_SECRET": REAL_SECRET}, {}, ("", REAL_SECRET)),
        ({}, {"AUTH_JWKS_URL": "https://idp.example/.well-known/jwks.json"}, ("https://idp.example/.well-known/jwks.json", "")),
    ],
    ids=["hs256-secret", "jwks-url"],
)
def test_the_documented_overlay_makes_a_gateway_that_starts(tmp_path, monkeypatch, secrets, config, keys):
    from gateway.config import GatewayConfig

    overlay = _overlay(tmp_path, {**DB_PASSWORDS, **secrets}, config)
    gateway = app_container("api-gateway", overlay)
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in container_env(gateway, overlay).items():
        monkeypatch.setenv(key, value)
    loaded = GatewayConfig.from_env()
    assert (loaded.auth.mode, loaded.auth.jwks_url, loaded.auth.hs256_secret) == ("jwt", *keys)


def _load(monkeypatch, c: dict, loader, **overrides):
    """A process's own config loader, run on exactly the env the manifest
    gives it (with `overrides`, as an overlay would set them)."""
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in {**container_env(c), **overrides}.items():
        monkeypatch.setenv(key, value)
    return loader()


# ------------------------------------------------------------- the rest


@pytest.mark.parametrize("name", APPS)
def test_every_deployment_has_a_disruption_budget_that_allows_evictions(name):
    deployment = objects("Deployment")[name]
    budgets = [
        b for b in objects("PodDisruptionBudget").values() if selects(b["spec"]["selector"], pod_labels(deployment))
    ]
    assert len(budgets) == 1, f"{name}: {len(budgets)} PodDisruptionBudgets"
    spec = budgets[0]["spec"]
    # Keeps one pod up, yet never blocks a node drain outright.
    assert spec.get("minAvailable", 0) >= 1 or spec.get("maxUnavailable") == 1
    assert spec.get("minAvailable", 0) < deployment["spec"]["replicas"]


def test_inventory_scales_horizontally_on_cpu():
    (hpa,) = [h for h in objects("HorizontalPodAutoscaler").values()]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "inventory-service"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "cpu" in app_container("inventory-service")["resources"]["requests"]


def _init_configmap() -> str:
    volumes = pod_spec(objects("StatefulSet")["postgres"])["volumes"]
    (init,) = [v for v in volumes if v["name"] == "init"]
    return init["configMap"]["name"]


def test_postgres_is_a_stateful_set_with_a_volume_and_the_init_script():
    postgres = objects("StatefulSet")["postgres"]
    (claim,) = postgres["spec"]["volumeClaimTemplates"]
    c = app_container("postgres")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/postgresql/data"
    assert container_env(c)["PGDATA"].startswith("/var/lib/postgresql/data/")
    assert mounts["init"] == "/docker-entrypoint-initdb.d"
    assert postgres["spec"]["serviceName"] in objects("Service")
    script = config_data(_init_configmap())["init-databases.sh"]
    assert script == (K8S / "postgres" / "init-databases.sh").read_text()
    if shutil.which("sh"):
        subprocess.run(["sh", "-n"], input=script, text=True, check=True, timeout=10)


def test_secret_holds_placeholders_only():
    for key, value in secret_data("shop-secrets").items():
        assert value.startswith("change-me"), f"{key} looks like a real secret"


def test_every_config_and_secret_reference_exists():
    for name, c, _ in _every_env():
        for source in c.get("envFrom", []):
            ref = source.get("configMapRef") or source.get("secretRef")
            assert ref["name"] in {**objects("ConfigMap"), **objects("Secret")}, name
        for var in c.get("env", []):
            ref = var.get("valueFrom", {})
            if "secretKeyRef" in ref:
                assert ref["secretKeyRef"]["key"] in secret_data(ref["secretKeyRef"]["name"]), name
            if "configMapKeyRef" in ref:
                assert ref["configMapKeyRef"]["key"] in config_data(ref["configMapKeyRef"]["name"]), name


# ------------------------------------------------------ NetworkPolicies

# Peers outside the namespace: a client on the internet, a pod elsewhere that
# happens to carry the gateway's labels, Prometheus, and the cluster DNS.
EXTERNAL_PEERS = {
    "internet": {"ip": "203.0.113.7"},
    "pod-in-default-ns": {"namespace": "default", "labels": {"app": "api-gateway", "tier": "backend"}, "ip": "10.9.0.1"},
    "prometheus": {
        "namespace": "monitoring",
        "labels": {"app.kubernetes.io/name": "prometheus"},
        "ip": "10.9.0.2",
    },
    "kube-dns": {
        "namespace": "kube-system",
        "labels": {"k8s-app": "kube-dns"},
        "ip": "10.9.0.3",
        "ports": [(53, "UDP", None), (53, "TCP", None)],
    },
}
SHOP_WORKLOADS = ["api-gateway", "order-service", "inventory-service", "payment-service", "postgres", "redis"]

# The call graph (DESIGN.md, the issue): everything else is denied.
EXPECTED_FLOWS = (
    {(src, "api-gateway", 8080, "TCP") for src in EXTERNAL_PEERS}  # anyone from outside
    | {
        ("api-gateway", "order-service", 50053, "TCP"),
        ("api-gateway", "inventory-service", 50051, "TCP"),
        ("api-gateway", "payment-service", 50052, "TCP"),
        ("api-gateway", "redis", 6379, "TCP"),
        ("order-service", "inventory-service", 50051, "TCP"),
        ("order-service", "payment-service", 50052, "TCP"),
        ("order-service", "postgres", 5432, "TCP"),
        ("inventory-service", "postgres", 5432, "TCP"),
        ("payment-service", "postgres", 5432, "TCP"),
        ("prometheus", "inventory-service", 9101, "TCP"),
        ("prometheus", "payment-service", 9102, "TCP"),
        ("prometheus", "order-service", 9103, "TCP"),
    }
    | {(src, "kube-dns", 53, proto) for src in SHOP_WORKLOADS for proto in ("UDP", "TCP")}
)


def _peers() -> dict[str, dict]:
    peers = {}
    for index, name in enumerate(SHOP_WORKLOADS):
        workload = workloads()[name]
        peers[name] = {
            "namespace": NAMESPACE,
            "labels": pod_labels(workload),
            "ip": f"10.8.0.{index + 1}",
            "ports": [
                (p["containerPort"], p.get("protocol", "TCP"), p.get("name"))
                for c in pod_spec(workload)["containers"]
                for p in c.get("ports", [])
            ],
        }
    for name, peer in EXTERNAL_PEERS.items():
        peers[name] = {"labels": {}, "ports": [(443, "TCP", None)], **peer}
    return peers


def _peer_matches(rule_peers, policy_namespace: str, peer: dict) -> bool:
    if not rule_peers:
        return True  # no from/to: every source or destination
    for rule_peer in rule_peers:
        if "ipBlock" in rule_peer:
            ip = ipaddress.ip_address(peer["ip"])
            block = rule_peer["ipBlock"]
            if ip in ipaddress.ip_network(block["cidr"]) and not any(
                ip in ipaddress.ip_network(e) for e in block.get("except", [])
            ):
                return True
            continue
        if "namespace" not in peer:
            continue  # not a pod: only an ipBlock can name it
        if "namespaceSelector" in rule_peer:
            ns_labels = {"kubernetes.io/metadata.name": peer["namespace"]}
            if not selects(rule_peer["namespaceSelector"], ns_labels):
                continue
        elif peer["namespace"] != policy_namespace:
            continue  # a bare podSelector means this namespace only
        if selects(rule_peer.get("podSelector", {}), peer["labels"]):
            return True
    return False


def _port_matches(rule_ports, dest_port: tuple) -> bool:
    if not rule_ports:
        return True
    number, protocol, name = dest_port
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        if isinstance(p["port"], str):
            if p["port"] == name:
                return True
        elif p["port"] <= number <= p.get("endPort", p["port"]):
            return True
    return False


def _allowed(direction: str, subject: dict, other: dict, dest_port: tuple) -> bool:
    """Whether the policies of `subject`'s namespace let this flow through on
    subject's side (its ingress, or its egress)."""
    if subject.get("namespace") != NAMESPACE:
        return True  # outside the namespace: not ours to restrict
    policy_type = direction.capitalize()
    applying = [
        p
        for p in objects("NetworkPolicy").values()
        if selects(p["spec"]["podSelector"], subject["labels"])
        and policy_type in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not applying:
        return True
    peers_key = "from" if direction == "ingress" else "to"
    return any(
        _peer_matches(rule.get(peers_key), p["metadata"].get("namespace", NAMESPACE), other)
        and _port_matches(rule.get("ports"), dest_port)
        for p in applying
        for rule in p["spec"].get(direction, [])
    )


def test_network_policies_allow_exactly_the_call_graph():
    peers = _peers()
    flows = set()
    for src_name, src in peers.items():
        for dst_name, dst in peers.items():
            if NAMESPACE not in (src.get("namespace"), dst.get("namespace")):
                continue  # neither end is ours
            for dest_port in dst["ports"]:
                if _allowed("egress", src, dst, dest_port) and _allowed("ingress", dst, src, dest_port):
                    flows.add((src_name, dst_name, dest_port[0], dest_port[1]))
    assert sorted(flows - EXPECTED_FLOWS) == [], "allowed, but not in the call graph"
    assert sorted(EXPECTED_FLOWS - flows) == [], "in the call graph, but denied"


def test_network_policies_start_from_default_deny():
    deny = [
        p
        for p in objects("NetworkPolicy").values()
        if p["spec"]["podSelector"] == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, "no default-deny policy for the whole namespace"


# --------------------------------------------- images the manifests name


def _dockerfile_stages() -> dict[str, str]:
    stages, name, lines = {}, None, []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        match = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            if name:
                stages[name] = "\n".join(lines)
            name, lines = match.group(1) or f"stage{len(stages)}", []
        lines.append(line)
    stages[name] = "\n".join(lines)
    return stages


@pytest.mark.parametrize("name", APPS)
def test_each_image_is_a_dockerfile_target_matching_its_pod(name):
    stages = _dockerfile_stages()
    assert name in stages, f"no Dockerfile target {name} for image {IMAGES[name]}"
    stage = stages[name]
    # Exec form, so SIGTERM reaches the process itself.
    (entrypoint,) = re.findall(r"^ENTRYPOINT\s+(.+)$", stage, re.MULTILINE)
    assert entrypoint.startswith("["), f"{name}: ENTRYPOINT is not in exec form"
    assert re.search(rf"^USER\s+{APP_UID}(:{APP_UID})?$", stage, re.MULTILINE)
    assert pod_spec(objects("Deployment")[name])["securityContext"]["runAsUser"] == APP_UID
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", stage, re.MULTILINE) for p in line.split()}
    assert exposed == set(declared_ports(objects("Deployment")[name]).values())


def test_dockerfile_builds_from_python_slim_without_dev_dependencies():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert "requirements-dev" not in dockerfile
    assert "PYTHONDONTWRITEBYTECODE=1" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text()
    assert re.search(r"^\*\*$", ignored, re.MULTILINE), ".dockerignore should exclude by default"
    assert "!requirements-dev.txt" not in ignored and "!tests" not in ignored


# ------------------------------------------------------------ the tracing component


def test_the_tracing_component_sends_every_process_s_spans_to_its_collector(tmp_path):
    rendered = render_with("tracing")
    assert validate_strictly(rendered, tmp_path) == []
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    by_kind: dict[str, dict] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    assert all(doc["metadata"].get("namespace") == NAMESPACE for doc in docs if doc["kind"] != "Namespace")
    (config,) = [c for name, c in by_kind["ConfigMap"].items() if name.startswith("shop-config")]
    endpoint = urlsplit(config["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert config["data"]["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    collector = by_kind["Service"][endpoint.hostname]
    assert endpoint.port in {p["port"] for p in collector["spec"]["ports"]}
    # Every app reads the merged config (one generated name for all of them).
    for app in APPS:
        pod = by_kind["Deployment"][app]["spec"]["template"]["spec"]
        sources = [s["configMapRef"]["name"] for c in pod["containers"] for s in c.get("envFrom", ())]
        assert config["metadata"]["name"] in sources, app
    # Both ends of the call are allowed.
    egress = by_kind["NetworkPolicy"]["spans-to-otel-collector"]
    (selector,) = egress["spec"]["podSelector"]["matchExpressions"]
    assert set(selector["values"]) == set(APPS)
    assert endpoint.port in {p["port"] for rule in egress["spec"]["egress"] for p in rule["ports"]}
    ingress = by_kind["NetworkPolicy"]["otel-collector"]["spec"]["ingress"][0]
    assert set(ingress["from"][0]["podSelector"]["matchExpressions"][0]["values"]) == set(APPS)
