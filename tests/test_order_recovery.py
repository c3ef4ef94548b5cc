"""Crash recovery, on SQLite and PostgreSQL. The order service runs as a real
process (python -m order_svc) and is killed (SIGKILL) while the saga of each
order is held at a different step by the in-process inventory or payment
server; a fresh order service on the same database then recovers every order:
CONFIRMED with its stock taken and one capture, or failed with its stock
back and nothing charged: an order is completed only if its charge was in
place, never charged anew. The held calls are let through only afterwards,
so the late Reserve, Charge or Release of the dead process arrives too."""

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import pytest

from order_svc.model import Order, OrderItem, OrderStatus, Step
from order_svc.store import OrderStore
from plumbing import db
from shop.inventory.v1 import inventory_pb2 as inv
from shop.order.v1 import order_pb2 as pb
from shop.order.v1 import order_pb2_grpc
from shop.payment.v1 import payment_pb2 as pay
from tests import harness

# Long enough for every order to reach its held call before the kill; the
# recovering service waits for the dead one's leases, which last this long.
CRASHED_DOWNSTREAM_TIMEOUT_S = "2"


@pytest.fixture
def shop(database_url, sqlite_url):
    shop = harness.OrderShop.start(database_url, sqlite_url, with_order=False)
    yield shop
    shop.stop()


@dataclass
class Hold:
    """One order's saga, held at one call: before the upstream handles it
    (the call is in flight when the process dies) or after (the upstream did
    it, the answer is lost)."""

    product_id: str
    payment_method: str
    method: str
    when: str
    expected: int
    arrived: threading.Event = field(default_factory=threading.Event)
    order_id: str = ""


class Holds:
    """Rules for the inventory and payment Faults that hold each order's
    chosen call (only the first: recovery's own calls go through) until
    `release` is set."""

    def __init__(self, holds: list[Hold]):
        self.by_product = {h.product_id: h for h in holds}
        self.by_order: dict[str, Hold] = {}
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._held: set[tuple[str, str]] = set()

    def install(self, shop) -> None:
        for faults, methods in ((shop.inventory_faults, ("Reserve", "Release")), (shop.payment_faults, ("Charge",))):
            for method in methods:
                faults.rules[method] = self._rule(method)

    def _rule(self, name):
        def rule(request, context, method):
            with self._lock:
                if name == "Reserve":
                    hold = self.by_product.get(request.items[0].product_id)
                    if hold is not None and not hold.order_id:
                        hold.order_id = request.order_id
                        self.by_order[request.order_id] = hold
                hold = self.by_order.get(request.order_id)
                first = hold is not None and hold.method == name and (name, request.order_id) not in self._held
                if first:
                    self._held.add((name, request.order_id))
            if not first:
                return method(request, context)
            if hold.when == "before":
                hold.arrived.set()
                self.release.wait(60)
                return method(request, context)
            answer = method(request, context)
            hold.arrived.set()
            self.release.wait(60)
            return answer

        return rule


def place_on(address: str, hold: Hold):
    """CreateOrder on the doomed process; it dies before answering."""
    with grpc.insecure_channel(address) as channel:
        request = pb.CreateOrderRequest(
            customer_id=f"C-{hold.product_id}",
            items=[pb.Item(product_id=hold.product_id, quantity=2)],
            payment_method=hold.payment_method,
        )
        try:
            return order_pb2_grpc.OrderServiceStub(channel).CreateOrder(request, timeout=30)
        except grpc.RpcError as error:
            return error


def crash_mid_saga(shop, holds: list[Hold], tmp_path) -> None:
    """Start the order service as a process, place one order per hold, and
    kill the process once every order is held."""
    process = harness.spawn_order(
        shop.urls["order"],
        shop.inventory.address,
        shop.payment.address,
        str(tmp_path / "order-process.log"),
        DOWNSTREAM_TIMEOUT_S=CRASHED_DOWNSTREAM_TIMEOUT_S,
        RECOVERY_INTERVAL_S="600",
    )
    with ThreadPoolExecutor(len(holds)) as pool:
        answers = [pool.submit(place_on, process.address, hold) for hold in holds]
        try:
            for hold in holds:
                assert hold.arrived.wait(20), f"the saga of {hold.product_id} never reached its {hold.method}"
        finally:
            process.kill()
        for answer in answers:
            assert isinstance(answer.result(), grpc.RpcError), "an order completed before the kill"


def stock(shop) -> dict[str, int]:
    products = shop.inventory_stub().ListProducts(inv.ListProductsRequest(), timeout=10).products
    return {p.product_id: p.available for p in products}


def price_list(shop) -> dict[str, int]:
    products = shop.inventory_stub().ListProducts(inv.ListProductsRequest(), timeout=10).products
    return {p.product_id: p.price_cents for p in products}


def assert_priced(order, product_id: str, prices: dict[str, int], payments) -> None:
    """Two of product_id at the inventory's price, charged that total."""
    assert [i.unit_price_cents for i in order.items] == [prices[product_id]]
    assert (order.total_cents, order.currency) == (2 * prices[product_id], "USD")
    assert [p.amount_cents for p in payments] == [order.total_cents]


def payments_of(shop, order_id):
    return list(shop.payment_stub().ListPayments(pay.ListPaymentsRequest(order_id=order_id), timeout=10).payments)


def wait_until_final(orders, order_ids) -> dict[str, pb.Order]:
    def all_final():
        found = {i: orders.GetOrder(pb.GetOrderRequest(order_id=i), timeout=10) for i in order_ids}
        return found if all(o.status != pb.PENDING for o in found.values()) else None

    return harness.eventually(all_final, timeout_s=30, what="recovery of every order")


def test_crash_after_each_saga_step_is_recovered_to_a_consistent_final_state(shop, tmp_path):
    holds = [
        Hold("P001", "tok_visa", "Reserve", "before", pb.FAILED),
        Hold("P002", "tok_visa", "Reserve", "after", pb.FAILED),
        # The Charge never got through: voided, so when it arrives it is refused.
        Hold("P003", "tok_visa", "Charge", "before", pb.FAILED),
        Hold("P004", "tok_visa", "Charge", "after", pb.CONFIRMED),
        Hold("P005", "tok_chargeDeclined", "Charge", "after", pb.PAYMENT_FAILED),
        Hold("P006", "tok_chargeDeclined", "Release", "before", pb.PAYMENT_FAILED),
        Hold("P007", "tok_insufficientFunds", "Release", "after", pb.PAYMENT_FAILED),
    ]
    held = Holds(holds)
    held.install(shop)
    before = stock(shop)

    crash_mid_saga(shop, holds, tmp_path)
    orders = shop.orders(shop.start_order())
    final = wait_until_final(orders, [h.order_id for h in holds])
    # Now the dead process's held calls arrive, late.
    held.release.set()
    harness.eventually(
        lambda: len(shop.inventory_faults.answered("Reserve")) == len(shop.inventory_faults.requests("Reserve"))
        and len(shop.inventory_faults.answered("Release")) == len(shop.inventory_faults.requests("Release"))
        and len(shop.payment_faults.answered("Charge")) == len(shop.payment_faults.requests("Charge")),
        what="the late calls being handled",
    )

    after = stock(shop)
    prices = price_list(shop)
    for hold in holds:
        order = final[hold.order_id]
        payments = payments_of(shop, hold.order_id)
        captured = [p.id for p in payments if p.status == pay.CAPTURED]
        outcome = (hold.product_id, pb.OrderStatus.Name(order.status))
        assert order.status == hold.expected, outcome
        if hold.expected != pb.FAILED:
            # Recorded with the inventory's prices, which the crashed process never wrote.
            assert_priced(order, hold.product_id, prices, payments)
        if hold.expected == pb.CONFIRMED:
            assert captured == [order.payment_id], outcome
            assert after[hold.product_id] == before[hold.product_id] - 2, outcome
        else:
            assert captured == [], outcome
            assert after[hold.product_id] == before[hold.product_id], outcome
    assert orders.GetOrder(pb.GetOrderRequest(order_id=holds[0].order_id), timeout=10) == final[holds[0].order_id]


def test_two_replicas_recovering_one_backlog_drive_each_order_once(shop, tmp_path):
    # Half the orders were charged when the process died, half had their
    # Charge still in flight.
    products = ["P001", "P002", "P003", "P004", "P005", "P006", "P007", "P008", "P009", "P010"]
    holds = [
        Hold(p, "tok_visa", "Charge", *(("after", pb.CONFIRMED) if n % 2 else ("before", pb.FAILED)))
        for n, p in enumerate(products)
    ]
    held = Holds(holds)
    held.install(shop)
    before = stock(shop)

    crash_mid_saga(shop, holds, tmp_path)
    replicas = [shop.start_order(), shop.start_order()]
    final = wait_until_final(shop.orders(replicas[0]), [h.order_id for h in holds])
    held.release.set()
    harness.eventually(
        lambda: len(shop.payment_faults.answered("Charge")) == len(holds),
        what="the late Charges being handled",
    )

    payments = shop.payment_faults
    lookups = [r.order_id for r in payments.requests("ListPayments")]
    voids = [r.order_id for r in payments.requests("Void")]
    charges = [r.order_id for r in payments.requests("Charge")]
    after = stock(shop)
    prices = price_list(shop)
    for hold in holds:
        outcome = (hold.product_id, pb.OrderStatus.Name(final[hold.order_id].status))
        assert final[hold.order_id].status == hold.expected, outcome
        # Driven once: one look at its payment, at most one Void, and no
        # Charge but the dead process's own.
        assert lookups.count(hold.order_id) == 1, outcome
        assert voids.count(hold.order_id) == (1 if hold.when == "before" else 0), outcome
        assert charges.count(hold.order_id) == 1, outcome
        captured = [p.id for p in payments_of(shop, hold.order_id) if p.status == pay.CAPTURED]
        if hold.expected == pb.CONFIRMED:
            assert captured == [final[hold.order_id].payment_id], outcome
            assert_priced(final[hold.order_id], hold.product_id, prices, payments_of(shop, hold.order_id))
            assert after[hold.product_id] == before[hold.product_id] - 2, outcome
        else:
            assert captured == [], outcome
            assert after[hold.product_id] == before[hold.product_id], outcome


def test_an_order_left_charging_by_an_earlier_version_is_completed_with_its_recorded_prices(shop):
    # Earlier versions persisted a CHARGING step, with the prices, before the
    # Charge; such an order left behind by a crash still recovers.
    order_id = "ord_earlier_version"
    inventory, payment = shop.inventory_stub(), shop.payment_stub()
    line = inventory.Reserve(
        inv.ReserveRequest(order_id=order_id, items=[inv.Item(product_id="P001", quantity=2)]), timeout=10
    ).items[0]
    total = 2 * line.unit_price_cents
    charge = payment.Charge(
        pay.ChargeRequest(order_id=order_id, amount_cents=total, currency="USD", payment_method="tok_visa"), timeout=10
    )
    engine = db.open_engine(shop.urls["order"])
    try:
        store = OrderStore(engine)
        store.migrate()
        store.create(
            Order(
                id=order_id,
                customer_id="C-earlier",
                status=OrderStatus.PENDING,
                step=Step.CHARGING,
                items=(OrderItem("P001", 2, line.unit_price_cents, "USD"),),
                payment_method="tok_visa",
                total_cents=total,
                currency="USD",
            ),
            "",
            "fingerprint",
            "a-process-now-gone",
            dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1),
        )
    finally:
        engine.dispose()

    orders = shop.orders(shop.start_order())
    order = wait_until_final(orders, [order_id])[order_id]
    assert order.status == pb.CONFIRMED
    assert (order.payment_id, order.total_cents, order.currency) == (charge.id, total, "USD")
    assert [i.unit_price_cents for i in order.items] == [line.unit_price_cents]
    # Priced already: recovery did not ask inventory again, nor charge anew.
    assert len(shop.inventory_faults.requests("Reserve")) == 1
    assert len(shop.payment_faults.requests("Charge")) == 1
