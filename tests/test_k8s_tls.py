"""The manifests with mutual TLS on (k8s/components/tls in an overlay of
k8s/, and the Secrets `python -m scripts.certs DIR --k8s-secrets` makes):
validated as strictly as the base, held to the same rules, and each pod
mounting its own certificate, probed in plaintext on its HEALTH_PORT."""

import base64
import functools
import json
import os
import subprocess
import tempfile

import pytest
import yaml

from plumbing.config import ServerConfig
from plumbing.tls import certificate_identity
from scripts.certs import SERVICE_NAMES, kubernetes_secrets, make_certificates
from tests import test_k8s_manifests as base

PROCESS_OF = {service: name for name, service in SERVICE_NAMES.items()}


@functools.cache
def rendered(_path: object = None) -> tuple[dict, ...]:
    """k8s/ with the component, as a user's overlay renders it, plus the
    Secrets the documented command makes. (Takes the base's `path`, as its
    _objects does, and renders the TLS overlay whatever it is.)"""
    with tempfile.TemporaryDirectory() as directory:
        secrets = kubernetes_secrets(make_certificates(directory))["items"]
    for secret in secrets:
        secret["metadata"]["namespace"] = base.NAMESPACE  # kubectl apply -n shop
    return (*(doc for doc in yaml.safe_load_all(base.render_with("tls")) if doc), *secrets)


@pytest.fixture
def with_tls(monkeypatch):
    """The base module's helpers, looking at the TLS rendering."""
    monkeypatch.setattr(base, "_objects", rendered)


def test_manifests_and_secrets_validate_strictly_against_kubernetes_1_32(tmp_path):
    assert base.validate_strictly(yaml.safe_dump_all(rendered()), tmp_path) == []


# The base's rules, every one that does not pin plaintext itself.
RULES = [
    (base.test_every_container_has_readiness_and_liveness_probes, "container_id", lambda: base.CONTAINER_IDS),
    (base.test_every_container_has_requests_and_limits, "container_id", lambda: base.CONTAINER_IDS),
    (base.test_every_container_is_hardened, "container_id", lambda: base.CONTAINER_IDS),
    (base.test_writable_paths_are_empty_dirs_or_claims, "container_id", lambda: base.CONTAINER_IDS),
    (base.test_termination_grace_outlasts_the_drain, "name", lambda: base.APPS),
    (base.test_every_service_selects_one_workload_and_targets_a_declared_port, "name", lambda: base.objects("Service")),
    (base.test_every_env_reference_resolves, None, None),
    (base.test_every_config_and_secret_reference_exists, None, None),
    (base.test_grpc_addresses_name_headless_services_on_their_ports, None, None),
    (base.test_network_policies_allow_exactly_the_call_graph, None, None),
    (base.test_network_policies_start_from_default_deny, None, None),
    (base.test_gateway_probes_health_not_ready, None, None),
]


@pytest.mark.parametrize("rule, argument, values", RULES, ids=[rule.__name__ for rule, _, _ in RULES])
def test_the_base_rules_hold_with_tls_on(with_tls, rule, argument, values):
    if argument is None:
        rule()
        return
    for value in values():
        rule(**{argument: value})


def _mounted_secret(workload: dict, container: dict, path: str) -> tuple[dict, str]:
    """The Secret a file path in the container comes from, and its key."""
    directory, _, key = path.rpartition("/")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in base.pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
    return base.objects("Secret")[volume["secret"]["secretName"]], key


@pytest.mark.parametrize("name", base.APPS)
def test_each_pod_mounts_its_own_certificate_and_the_ca(with_tls, name):
    workload, container = base.workloads()[name], base.app_container(name)
    env = base.container_env(container)
    files = {}
    for setting in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE"):
        secret, key = _mounted_secret(workload, container, env[setting])
        assert secret["metadata"]["name"] == f"{name}-tls" and secret["type"] == "kubernetes.io/tls"
        files[setting] = base64.b64decode(secret["data"][key])
    assert certificate_identity(*files.values()) == PROCESS_OF[name]
    (volume,) = [v for v in base.pod_spec(workload)["volumes"] if v["name"] == "tls"]
    # The key is readable by the app's group (fsGroup), no one else.
    assert volume["secret"]["defaultMode"] == 0o440
    assert base.pod_spec(workload)["securityContext"]["fsGroup"] == base.APP_UID


@pytest.mark.parametrize("name", base.GRPC_SERVICES)
def test_grpc_services_are_probed_natively_in_plaintext_on_their_health_port(with_tls, name, monkeypatch):
    container = base.app_container(name)
    env = base.container_env(container)
    for setting in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE"):
        env.pop(setting)  # the files exist in the pod only; the rest is loaded as the service loads it
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = ServerConfig.from_env(base.GRPC_SERVICES[name][0])
    health_port = base.declared_ports(base.workloads()[name])["health"]
    assert config.health_port == health_port != config.port
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "httpGet" not in container[kind]
        assert container[kind]["grpc"]["port"] == health_port, kind
    assert container["readinessProbe"]["grpc"]["service"] == base.GRPC_SERVICES[name][1]


def test_the_secrets_command_prints_what_kubectl_applies(tmp_path):
    done = subprocess.run(
        [base.sys.executable, "-m", "scripts.certs", str(tmp_path), "--k8s-secrets"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=base.ROOT,
    )
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert sorted(s["metadata"]["name"] for s in listed["items"]) == sorted(f"{app}-tls" for app in base.APPS)
    # The CA's key stays on the machine that made it.
    ca_key = base64.b64encode((tmp_path / "ca.key").read_bytes()).decode()
    assert ca_key not in done.stdout and (tmp_path / "ca.key").stat().st_mode & 0o077 == 0
