"""Settings a process cannot use refuse its start in one line naming the
setting and what it may be (API.md): ports outside 1-65535, numbers that
are not finite, database URLs and folders it cannot use, and single
addresses that are not host:port; `make run` refuses its own the same way."""

import os
import signal
import subprocess
import sys

import pytest

from gateway.config import GatewayConfig
from launcher.plan import plan
from launcher.stack import free_port_base
from plumbing import config as plumbing_config
from plumbing.config import ConfigError, OrderConfig, ServerConfig, UpstreamConfig
from tests.harness import ROOT

ACCEPTED_URLS = "use sqlite:///path/to.db or postgresql://user:password@host/database"


@pytest.fixture(autouse=True)
def settings(monkeypatch, tmp_path):
    """Only what each test sets, and SQLite in a folder of its own."""
    for name in list(os.environ):
        if name.endswith(("_PORT", "_ADDR", "_S", "_H", "DATABASE_URL")) or name.startswith(("AUTH", "ADMIN_TOKEN", "TLS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))


def refusal(load) -> str:
    with pytest.raises(ConfigError) as refused:
        load()
    return str(refused.value)


def run_refused(module: str, env: dict[str, str]) -> tuple[int, str, str]:
    """`python -m module`'s exit status, stdout and stderr; should it start
    instead of refusing, it is stopped after a while with all it started."""
    process = subprocess.Popen(
        [sys.executable, "-m", module], env=env, cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    return process.returncode, out, err


# Ports


@pytest.mark.parametrize("value", ["70000", "65536", "99999", "-1", "abc", "80.5", "٣"])
@pytest.mark.parametrize("name", ["INVENTORY_PORT", "METRICS_PORT", "HEALTH_PORT"])
def test_a_service_port_setting_outside_its_range_is_refused_naming_it_and_the_range(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    said = refusal(lambda: ServerConfig.from_env("inventory"))
    assert said == f"{name}={value!r} must be a port number, 1-65535 (or 0: any free port)"


def test_a_service_port_of_0_is_any_free_port_as_the_tests_run_services(monkeypatch):
    # tests/harness.py's spawn_order (ORDER_PORT, METRICS_PORT) and test_mtls (HEALTH_PORT).
    for name in ("ORDER_PORT", "METRICS_PORT", "HEALTH_PORT"):
        monkeypatch.setenv(name, "0")
    config = ServerConfig.from_env("order")
    assert (config.port, config.metrics_port, config.health_port) == (0, 0, 0)
    monkeypatch.setenv("ORDER_PORT", "65535")
    assert ServerConfig.from_env("order").port == 65535


@pytest.mark.parametrize("value", ["0", "70000", "abc", "-80"])
def test_the_gateway_port_is_1_to_65535(monkeypatch, value):
    monkeypatch.setenv("GATEWAY_PORT", value)
    assert refusal(GatewayConfig.from_env) == f"GATEWAY_PORT={value!r} must be a port number, 1-65535"


@pytest.mark.parametrize("value", ["abc", "0", "70000", "x1"])
@pytest.mark.parametrize("name", ["INVENTORY_PORT", "ORDER_METRICS_PORT", "PAYMENT_HEALTH_PORT", "GATEWAY_PORT"])
def test_make_run_refuses_a_port_setting_that_is_not_1_to_65535(name, value):
    assert refusal(lambda: plan({name: value})) == f"{name}={value!r} must be a port number, 1-65535"


def test_make_run_refuses_replica_ports_past_65535():
    assert [spec.port for spec in plan({"GATEWAY_PORT": "65534"}, replicas=2) if spec.module == "gateway"] == [
        65534,
        65535,
    ]
    assert refusal(lambda: plan({"INVENTORY_PORT": "65500"}, replicas=2)) == (
        "INVENTORY_PORT=65500: 2 replicas need ports up to 65600, past 65535"
    )


@pytest.mark.parametrize(
    "setting", [{"INVENTORY_PORT": "abc"}, {"ORDER_METRICS_PORT": "x"}, {"GATEWAY_PORT": "abc"}, {"INVENTORY_HEALTH_PORT": "abc"}]
)
def test_make_run_refuses_a_port_that_is_no_number_in_one_line(setting, tmp_path):
    ((name, value),) = setting.items()
    env = {**os.environ, "DATA_DIR": str(tmp_path), **setting}
    said = f"make run: refusing to start: {name}={value!r} must be a port number, 1-65535\n"
    assert run_refused("launcher", env) == (2, "", said)


# Numbers

# Every float setting, and what reads it.
FLOAT_SETTINGS = {
    "DRAIN_DELAY_S": lambda: ServerConfig.from_env("payment"),
    "SHUTDOWN_GRACE_S": lambda: ServerConfig.from_env("payment"),
    "MAX_CONNECTION_AGE_S": lambda: ServerConfig.from_env("payment"),
    "UPSTREAM_TIMEOUT_S": GatewayConfig.from_env,
    "DOWNSTREAM_TIMEOUT_S": OrderConfig.from_env,
    "RECOVERY_INTERVAL_S": OrderConfig.from_env,
    "RECOVERY_AFTER_S": OrderConfig.from_env,
    "IDEMPOTENCY_KEY_TTL_H": OrderConfig.from_env,
}


def test_the_float_settings_tested_are_every_one_the_config_reads(monkeypatch):
    read = []
    env_float = plumbing_config.env_float
    monkeypatch.setattr(plumbing_config, "env_float", lambda name, *args, **kw: read.append(name) or env_float(name, *args, **kw))
    for load in set(FLOAT_SETTINGS.values()):
        load()
    assert sorted(set(read)) == sorted(FLOAT_SETTINGS)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
@pytest.mark.parametrize("name", FLOAT_SETTINGS)
def test_a_float_setting_refuses_nan_and_infinity(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert refusal(FLOAT_SETTINGS[name]) == f"{name}={value!r} is not a finite number"


@pytest.mark.parametrize("name", FLOAT_SETTINGS)
def test_a_float_setting_keeps_its_range_and_refuses_what_timers_cannot_take(monkeypatch, name):
    monkeypatch.setenv(name, "-1")
    assert refusal(FLOAT_SETTINGS[name]).startswith(f"{name}=-1.0 must be at least ")
    # grpc's millisecond options overflowed at MAX_CONNECTION_AGE_S=3e6.
    monkeypatch.setenv(name, "3e6")
    assert refusal(FLOAT_SETTINGS[name]) == f"{name}=3000000.0 must be at most 1000000"
    monkeypatch.setenv(name, "1e6")
    FLOAT_SETTINGS[name]()


# The database


@pytest.mark.parametrize(
    "url, why",
    [
        ("mysql://shop:s3cret-pw@db/shop", f"a mysql:// URL is not supported: {ACCEPTED_URLS}"),
        ("garbage", f"not a database URL: {ACCEPTED_URLS}"),
        ("s3cret-pw@db/shop", f"not a database URL: {ACCEPTED_URLS}"),
        ("postgresql://shop:s3cret-pw@db:port/shop", f"not a database URL: {ACCEPTED_URLS}"),
        ("sqlite://", "SQLite needs a file (sqlite:///path/to.db): every replica thread shares it"),
    ],
)
def test_a_database_url_that_cannot_be_used_is_refused_never_quoting_it(monkeypatch, url, why):
    monkeypatch.setenv("DATABASE_URL", url)
    said = refusal(lambda: ServerConfig.from_env("inventory"))
    assert said == f"DATABASE_URL: {why}"
    assert "s3cret" not in said


def test_postgresql_and_sqlite_urls_are_taken_and_an_sqlite_folder_made(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", "postgresql://shop:pw@db:5432/shop")
    assert ServerConfig.from_env("order").database_url == "postgresql://shop:pw@db:5432/shop"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/elsewhere/order.db")
    assert ServerConfig.from_env("order").database_url == f"sqlite:///{tmp_path}/elsewhere/order.db"
    assert (tmp_path / "elsewhere").is_dir()
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "new" / "data"))
    assert ServerConfig.from_env("order").database_url == f"sqlite:///{tmp_path}/new/data/order.db"
    assert (tmp_path / "new" / "data").is_dir()


def test_a_data_dir_that_cannot_be_created_or_written_is_refused_naming_it(monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("")
    for data_dir, why in [(f"{tmp_path}/a-file/data", "Not a directory"), ("/proc/nonexist", "No such file or directory")]:
        monkeypatch.setenv("DATA_DIR", data_dir)
        assert refusal(lambda: ServerConfig.from_env("inventory")) == (
            f"DATA_DIR={data_dir!r}: the folder {data_dir!r} cannot be created or written ({why}): "
            "name one this process can create and write"
        )
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/a-file/inventory.db")
    assert refusal(lambda: ServerConfig.from_env("inventory")).startswith(
        f"DATABASE_URL: the folder '{tmp_path}/a-file' cannot be created or written"
    )


# Addresses


@pytest.mark.parametrize(
    "address, why",
    [
        ("localhost:99999", "port '99999' must be a port number, 1-65535"),
        ("localhost:0", "port '0' must be a port number, 1-65535"),
        ("localhost:http", "port 'http' must be a port number, 1-65535"),
        ("::::", "not host:port (nor a gRPC target such as dns:///inventory:50051)"),
        ("inventory:", "not host:port (nor a gRPC target such as dns:///inventory:50051)"),
        ("inventory", "not host:port (nor a gRPC target such as dns:///inventory:50051)"),
        ("::1:50051", "not host:port: an IPv6 address goes in brackets, as in [::1]:50051"),
        ("[::zz]:50051", "'[::zz]' is not an IPv6 address"),
        ("999.1.1.1:50051", "'999.1.1.1' is not an IPv4 address"),
        ("in ventory:50051", "'in ventory' is not a host name or address"),
        ("127.0.0.1:1,127.0.0.1:70000", "'127.0.0.1:70000' in a comma-separated list: port '70000' must be a port number, 1-65535"),
        ("127.0.0.1:1,[::1]:2", "a comma-separated list cannot mix IPv4 and IPv6 addresses"),
        ("nosuchhost.invalid:1,127.0.0.1:2", "cannot resolve 'nosuchhost.invalid'"),
        ("127.0.0.1:1,127.0.0.1", "'127.0.0.1' in a comma-separated list is not host:port"),
        (",", "a comma-separated list names no address"),
    ],
)
def test_an_address_that_is_not_host_port_refuses_the_start(monkeypatch, address, why):
    monkeypatch.setenv("INVENTORY_ADDR", address)
    assert refusal(UpstreamConfig.from_env) == f"INVENTORY_ADDR={address!r}: {why}"


@pytest.mark.parametrize("name", ["INVENTORY_ADDR", "PAYMENT_ADDR", "ORDER_ADDR"])
def test_every_address_setting_is_checked(monkeypatch, name):
    monkeypatch.setenv(name, "localhost:99999")
    assert refusal(UpstreamConfig.from_env).startswith(f"{name}='localhost:99999': ")


@pytest.mark.parametrize(
    "address",
    [
        "inventory:50051",
        "nosuchhost.invalid:50051",  # not looked up: a Service's name may not resolve yet
        "[::1]:50051",
        "10.0.0.1:1",
        "inventory-service.shop.svc.cluster.local:65535",
        "dns:///inventory:50051",
        "unix:/run/shop/inventory.sock",
        "ipv4:127.0.0.1:1,127.0.0.1:2",
    ],
)
def test_a_host_port_or_grpc_target_is_taken_as_it_is(monkeypatch, address):
    monkeypatch.setenv("INVENTORY_ADDR", address)
    assert UpstreamConfig.from_env().inventory_addr == address


# The gateway process


@pytest.mark.parametrize(
    "setting, said",
    [
        ({"GATEWAY_PORT": "70000"}, "GATEWAY_PORT='70000' must be a port number, 1-65535"),
        ({"UPSTREAM_TIMEOUT_S": "nan"}, "UPSTREAM_TIMEOUT_S='nan' is not a finite number"),
        ({"ORDER_ADDR": "host:"}, "ORDER_ADDR='host:': not host:port (nor a gRPC target such as dns:///inventory:50051)"),
    ],
)
def test_the_gateway_process_refuses_a_bad_setting_in_one_line(setting, said):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH", "ADMIN_TOKEN"))}
    environ = {**environ, "GATEWAY_PORT": str(free_port_base(step=1)), **setting}
    assert run_refused("gateway", environ) == (2, "", f"gateway: refusing to start: {said}\n")
