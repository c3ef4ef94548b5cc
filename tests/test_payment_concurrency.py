"""Charge, Void and Refund racing each other for one order, on two replicas
sharing one database (SQLite and PostgreSQL): each order is charged at most
once, and a Void is final."""

import threading

import grpc
import pytest
import sqlalchemy as sa

from payment_svc.store import charge_claims, payments
from plumbing.errors import from_rpc_error
from shop.payment.v1 import payment_pb2 as pb
from shop.payment.v1 import payment_pb2_grpc
from tests import harness


@pytest.fixture
def replicas(database_url):
    url = database_url("payment")
    running = [harness.run_payment(url), harness.run_payment(url)]
    yield running
    for replica in running:
        replica.stop()


@pytest.fixture
def stubs(replicas):
    return [payment_pb2_grpc.PaymentServiceStub(r.channel()) for r in replicas]


def all_at_once(calls):
    """Run every call in its own thread, released together; their outcomes
    (a response or the ShopError) in call order."""
    barrier = threading.Barrier(len(calls))
    outcomes = [None] * len(calls)

    def run(index, call):
        barrier.wait()
        try:
            outcomes[index] = call()
        except grpc.RpcError as error:
            outcomes[index] = from_rpc_error(error)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def charge_call(stub, order_id, payment_method="tok_visa"):
    request = pb.ChargeRequest(
        order_id=order_id, amount_cents=1999, currency="USD", payment_method=payment_method
    )
    return lambda: stub.Charge(request, timeout=60)


def void_call(stub, order_id):
    return lambda: stub.Void(pb.VoidRequest(order_id=order_id), timeout=60)


def refund_call(stub, order_id):
    return lambda: stub.Refund(pb.RefundRequest(order_id=order_id), timeout=60)


def rows(engine, table, order_id):
    with engine.connect() as conn:
        return conn.execute(sa.select(table).where(table.c.order_id == order_id)).all()


def test_twenty_concurrent_charges_for_one_order_on_two_replicas_make_one_payment(replicas, stubs):
    outcomes = all_at_once([charge_call(stubs[n % 2], "o1") for n in range(20)])
    assert all(isinstance(o, pb.Payment) for o in outcomes), outcomes
    assert len({o.id for o in outcomes}) == 1
    assert all(o == outcomes[0] for o in outcomes)
    assert len(rows(replicas[0].engine, payments, "o1")) == 1
    assert len(rows(replicas[0].engine, charge_claims, "o1")) == 1


def test_void_racing_charge_never_leaves_a_capture(replicas, stubs):
    orders = [f"race-{n}" for n in range(10)]
    calls = []
    for n, order_id in enumerate(orders):
        calls += [charge_call(stubs[n % 2], order_id), void_call(stubs[(n + 1) % 2], order_id)]
    outcomes = all_at_once(calls)
    for n, order_id in enumerate(orders):
        charged, voided = outcomes[2 * n], outcomes[2 * n + 1]
        assert isinstance(voided, pb.VoidResponse), voided
        after = list(stubs[0].ListPayments(pb.ListPaymentsRequest(order_id=order_id), timeout=10).payments)
        if isinstance(charged, pb.Payment):
            # The Charge came first: the Void refunded it.
            assert [(p.id, p.status) for p in after] == [(charged.id, pb.REFUNDED)]
            assert list(voided.payments) == after
        else:
            # The Void came first: the Charge was refused and nothing was charged.
            assert charged.reason == "ORDER_VOIDED"
            assert after == [] and list(voided.payments) == []


def test_concurrent_refunds_and_voids_refund_once(replicas, stubs):
    paid = charge_call(stubs[0], "o1")()
    calls = [refund_call(stubs[n % 2], "o1") for n in range(10)]
    calls += [void_call(stubs[n % 2], "o1") for n in range(10)]
    outcomes = all_at_once(calls)
    refunds = outcomes[:10] + [v.payments[0] for v in outcomes[10:]]
    assert all(p.id == paid.id and p.status == pb.REFUNDED for p in refunds)
    # One status change: every caller saw the same refunded row.
    assert len({p.updated_at.ToNanoseconds() for p in refunds}) == 1
    assert len(rows(replicas[0].engine, payments, "o1")) == 1


def test_concurrent_charges_of_many_orders_each_charge_once(replicas, stubs):
    calls = [charge_call(stubs[n % 2], f"order-{n % 5}") for n in range(20)]
    outcomes = all_at_once(calls)
    ids_by_order: dict[str, set[str]] = {}
    for outcome in outcomes:
        ids_by_order.setdefault(outcome.order_id, set()).add(outcome.id)
    assert {order_id: len(ids) for order_id, ids in ids_by_order.items()} == {
        f"order-{n}": 1 for n in range(5)
    }
    with replicas[0].engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(payments)).scalar_one() == 5
