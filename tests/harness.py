"""Start the services in-process on port 0, as the tests use them.

Composition mirrors each service's __main__ (store -> servicer -> server),
so what is tested is what runs.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest

from launcher.stack import free_port_base
from plumbing import db, deadlines
from plumbing.channels import dial
from plumbing.server import Service, ShopServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# For tests where the backend does not matter: SQLite only, to keep the suite quick.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@dataclass
class Running:
    server: ShopServer
    servicer: object
    engine: object
    channels: list = field(default_factory=list)
    # Loops the service runs beside its server (order recovery): (stop event, thread).
    background: list = field(default_factory=list)
    # Channels the service calls other services on, closed once it has stopped.
    upstream_channels: list = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def channel(self, tls=None) -> grpc.Channel:
        """A channel to the service: plaintext, or mutual TLS presenting `tls`
        (a TlsConfig) to a service started with TLS."""
        channel = dial(self.address, tls)
        self.channels.append(channel)
        return channel

    def stop(self, grace_s: float = 0) -> None:
        for stopping, _ in self.background:
            stopping.set()
        for _, thread in self.background:
            thread.join()
        for channel in self.channels:
            channel.close()
        self.server.stop(grace_s)
        close = getattr(self.servicer, "close", None)
        if close:
            close()
        for channel in self.upstream_channels:
            channel.close()
        self.engine.dispose()


def start(service: Service, engine, port: int = 0, tls=None) -> Running:
    """`tls`: the service's TlsConfig (mutual TLS, the caller table enforced)."""
    server = ShopServer([service], port, workers=16, max_concurrent_rpcs=256, host="127.0.0.1", tls=tls).start()
    return Running(server, service.servicer, engine)


def run_inventory(database_url: str, port: int = 0, wrap: Callable = lambda servicer: servicer, tls=None) -> Running:
    from inventory_svc.server import SERVICE_NAME, InventoryServicer
    from inventory_svc.store import InventoryStore
    from shop.inventory.v1 import inventory_pb2_grpc

    engine = db.open_engine(database_url)
    store = InventoryStore(engine)
    store.migrate()
    servicer = wrap(InventoryServicer(store))
    return start(
        Service(SERVICE_NAME, servicer, inventory_pb2_grpc.add_InventoryServiceServicer_to_server), engine, port, tls
    )


def run_payment(database_url: str, port: int = 0, wrap: Callable = lambda servicer: servicer, tls=None) -> Running:
    from payment_svc.server import SERVICE_NAME, PaymentServicer
    from payment_svc.store import PaymentStore
    from shop.payment.v1 import payment_pb2_grpc

    engine = db.open_engine(database_url)
    store = PaymentStore(engine)
    store.migrate()
    servicer = wrap(PaymentServicer(store))
    return start(
        Service(SERVICE_NAME, servicer, payment_pb2_grpc.add_PaymentServiceServicer_to_server), engine, port, tls
    )


def run_order(
    database_url: str, inventory_addr: str, payment_addr: str, port: int = 0, recover: bool = True, **settings
) -> Running:
    """The order service, calling inventory and payment at the given
    addresses, with its recovery loop unless recover=False. `settings`
    override OrderConfig's fields (tests use short recovery intervals; `tls`
    serves and calls with mutual TLS)."""
    from order_svc.__main__ import build_saga
    from order_svc.server import SERVICE_NAME, OrderServicer
    from order_svc.store import OrderStore
    from plumbing.config import OrderConfig
    from shop.order.v1 import order_pb2_grpc

    config = OrderConfig(inventory_addr=inventory_addr, payment_addr=payment_addr, **settings)
    engine = db.open_engine(database_url)
    store = OrderStore(engine)
    store.migrate()
    saga, upstream_channels = build_saga(config, store)
    servicer = OrderServicer(saga)
    running = start(
        Service(SERVICE_NAME, servicer, order_pb2_grpc.add_OrderServiceServicer_to_server), engine, port, config.tls
    )
    running.upstream_channels = upstream_channels
    if recover:
        stopping = threading.Event()
        thread = threading.Thread(target=saga.recovery.run_recovery, args=(stopping,), name="order-recovery", daemon=True)
        thread.start()
        running.background.append((stopping, thread))
    return running


class Faults:
    """A servicer wrapped (run_inventory(url, wrap=Faults)) so that a test
    can make its methods fail, stall or hang as a sick upstream would, and
    see what it was asked. rules["Charge"] = rule runs rule(request,
    context, method) in place of the method; `calls` lists (name, request)
    as calls arrive, `handled` as they are answered (or fail)."""

    def __init__(self, servicer):
        self.servicer = servicer
        self.rules: dict[str, Callable] = {}
        self.calls: list[tuple[str, object]] = []
        self.handled: list[tuple[str, object]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name):
        method = getattr(self.servicer, name)
        if not name[:1].isupper() or not callable(method):
            return method

        def faulty(request, context):
            with self._lock:
                self.calls.append((name, request))
            rule = self.rules.get(name)
            try:
                return rule(request, context, method) if rule else method(request, context)
            finally:
                with self._lock:
                    self.handled.append((name, request))

        return faulty

    def requests(self, name: str) -> list:
        with self._lock:
            return [request for called, request in self.calls if called == name]

    def answered(self, name: str) -> list:
        with self._lock:
            return [request for called, request in self.handled if called == name]


@dataclass
class OrderProcess:
    """`python -m order_svc` as a real process, to be killed mid-saga."""

    process: subprocess.Popen
    port: int
    log_path: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no drain, no compensation; whatever it had in memory is lost."""
        self.process.kill()
        self.process.wait()


def spawn_order(database_url: str, inventory_addr: str, payment_addr: str, log_path: str, **env) -> OrderProcess:
    """Start the order service process on free ports; returns once it serves."""
    environ = dict(
        os.environ,
        DATABASE_URL=database_url,
        INVENTORY_ADDR=inventory_addr,
        PAYMENT_ADDR=payment_addr,
        ORDER_PORT="0",
        METRICS_PORT="0",
        LOG_FORMAT="json",
        **env,
    )
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "order_svc"], env=environ, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    give_up = time.monotonic() + 30
    while time.monotonic() < give_up:
        with open(log_path) as log:
            for line in log:
                if line.startswith("{") and json.loads(line).get("message") == "serving":
                    return OrderProcess(process, json.loads(line)["port"], log_path)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    with open(log_path) as log:
        raise RuntimeError(f"order service did not start:\n{log.read()}")


@dataclass
class OrderShop:
    """Inventory and payment in-process, each wrapped in Faults, and the
    order service calling them: what the order tests run against."""

    urls: dict[str, str]
    inventory: Running
    payment: Running
    order: Running | None
    order_settings: dict
    replicas: list = field(default_factory=list)

    # Quick recovery, so tests settle in well under a second.
    FAST = dict(downstream_timeout_s=2.0, recovery_interval_s=0.05, recovery_after_s=0.1)

    @classmethod
    def start(cls, database_url, upstream_url=None, with_order: bool = True, **order_settings) -> "OrderShop":
        """database_url("order") holds the orders; inventory and payment use
        upstream_url (default: database_url too)."""
        upstream_url = upstream_url or database_url
        urls = {"inventory": upstream_url("inventory"), "payment": upstream_url("payment"), "order": database_url("order")}
        inventory = run_inventory(urls["inventory"], wrap=Faults)
        payment = run_payment(urls["payment"], wrap=Faults)
        settings = {**cls.FAST, **order_settings}
        shop = cls(urls, inventory, payment, None, settings)
        if with_order:
            shop.order = shop.start_order()
        return shop

    def start_order(self, **settings) -> Running:
        """An order service (one more replica) on the shop's order database."""
        running = run_order(
            self.urls["order"], self.inventory.address, self.payment.address, **{**self.order_settings, **settings}
        )
        self.replicas.append(running)
        return running

    @property
    def inventory_faults(self) -> Faults:
        return self.inventory.servicer

    @property
    def payment_faults(self) -> Faults:
        return self.payment.servicer

    def orders(self, running: Running | None = None):
        from shop.order.v1 import order_pb2_grpc

        return order_pb2_grpc.OrderServiceStub((running or self.order).channel())

    def inventory_stub(self):
        from shop.inventory.v1 import inventory_pb2_grpc

        return inventory_pb2_grpc.InventoryServiceStub(self.inventory.channel())

    def payment_stub(self):
        from shop.payment.v1 import payment_pb2_grpc

        return payment_pb2_grpc.PaymentServiceStub(self.payment.channel())

    def stop_upstream(self, name: str) -> int:
        """Stop inventory or payment (its port refuses calls); returns the port."""
        running = getattr(self, name)
        running.stop()
        return running.server.port

    def restart_upstream(self, name: str, port: int) -> None:
        """Start inventory or payment again on its database and old port."""
        run = run_inventory if name == "inventory" else run_payment
        setattr(self, name, run(self.urls[name], port=port, wrap=Faults))

    def stop(self) -> None:
        for running in self.replicas:
            running.stop()
        for running in (self.payment, self.inventory):
            running.stop()  # harmless if the test stopped it already


def held_until(gate: threading.Event, wait_s: float = 30):
    """A Faults rule: the upstream takes as long as the test says (at most wait_s)."""

    def rule(request, context, method):
        gate.wait(wait_s)
        return method(request, context)

    return rule


def widen_answer_margin(monkeypatch, seconds: float) -> None:
    """Widen the time a service keeps to answer before its caller's deadline
    (plumbing.deadlines.MARGIN_S, read at each use), for tests whose caller
    must get the service's own answer: 0.2 s is enough in production, not on
    a CI machine running two test workers and their stacks on two cores."""
    monkeypatch.setattr(deadlines, "MARGIN_S", seconds)


_HOLD_WRITE_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def write_lock_held_by_another_process(path: str) -> Iterator[None]:
    """Another process holds SQLite's write lock on the file at `path`."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_WRITE_LOCK, path], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        yield
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


class TcpProxy:
    """A local port forwarding to `target` that a test can take down (its
    connections closed, new ones refused) and bring back on the same port:
    a server going away and returning, as its clients see it."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        # Below the ephemeral range: while the proxy is down, no port-0
        # server or outgoing connection of another test takes its port.
        self.port = free_port_base()

    def __enter__(self) -> "TcpProxy":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> "TcpProxy":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        for sock in [listener, *sockets] if listener else sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # taken down
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._sockets |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


def eventually(check: Callable, timeout_s: float = 20, what: str = "the condition"):
    """Poll `check` until it returns something truthy, and return that. For
    outcomes reached in the background (recovery, settling); the timeout
    only bounds a hung test, it is not what is tested."""
    give_up = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > give_up:
            raise AssertionError(f"{what} did not happen within {timeout_s}s (last: {result!r})")
        time.sleep(0.02)
