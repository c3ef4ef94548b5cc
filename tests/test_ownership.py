"""Ownership enforced by the services themselves, over gRPC, with the
identity metadata the gateway passes (x-shop-subject, x-shop-scopes): a
customer places, sees and cancels only their own orders, payments and
payment methods, and another customer's answer exactly as unknown ones do.
Without the metadata (AUTH=off, grpcurl) no ownership rule applies."""

import grpc
import pytest
import sqlalchemy as sa

from payment_svc import store as payment_store
from plumbing import db, migrations
from plumbing.identity import ADMIN_SCOPE, Caller
from shop.inventory.v1 import inventory_pb2 as inv
from shop.order.v1 import order_pb2 as pb
from shop.payment.v1 import payment_pb2 as pay
from tests import harness
from tests.test_order_placement import card_method, payments_of, place, refused, stock

ALICE = Caller("alice").metadata()
BOB = Caller("bob").metadata()
ADMIN = Caller("ops", frozenset({ADMIN_SCOPE})).metadata()


def get_order(shop, order_id, metadata=()):
    return shop.orders().GetOrder(pb.GetOrderRequest(order_id=order_id), timeout=10, metadata=metadata)


def list_orders(shop, metadata=(), **fields):
    return shop.orders().ListOrders(pb.ListOrdersRequest(**fields), timeout=10, metadata=metadata)


def as_error_of_unknown(error, real_id: str, unknown_id: str):
    """The error, with one id in place of another: to compare an answer about
    another customer's resource with the answer about an unknown one."""
    return (
        error.code,
        error.reason,
        error.message.replace(real_id, unknown_id),
        {k: v.replace(real_id, unknown_id) for k, v in error.metadata.items()},
        error.violations,
    )


UNKNOWN_ORDER = "ord_000000000000000000000000"


# Orders


def test_a_customer_places_orders_for_themselves_only(shop):
    order = place(shop.orders(), customer_id="", metadata=ALICE)
    assert order.customer_id == "alice"
    assert place(shop.orders(), customer_id="alice", metadata=ALICE).customer_id == "alice"

    error = refused(place, shop.orders(), customer_id="bob", metadata=ALICE)
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert [o.customer_id for o in list_orders(shop, metadata=ADMIN).orders] == ["alice", "alice"]


def test_another_customers_order_is_not_found_exactly_as_an_unknown_one(shop):
    order = place(shop.orders(), customer_id="", metadata=ALICE)
    assert get_order(shop, order.id, ALICE).id == order.id

    theirs = refused(get_order, shop, order.id, BOB)
    unknown = refused(get_order, shop, UNKNOWN_ORDER, BOB)
    assert theirs.code == grpc.StatusCode.NOT_FOUND
    assert as_error_of_unknown(theirs, order.id, UNKNOWN_ORDER) == as_error_of_unknown(unknown, "", "")


def test_cancelling_another_customers_order_is_not_found_and_changes_nothing(shop):
    order = place(shop.orders(), customer_id="", metadata=ALICE)
    before = stock(shop, "P001")

    error = refused(shop.orders().CancelOrder, pb.CancelOrderRequest(order_id=order.id), timeout=10, metadata=BOB)

    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert get_order(shop, order.id).status == pb.CONFIRMED
    assert [p.status for p in payments_of(shop, order.id)] == [pay.CAPTURED]
    assert stock(shop, "P001") == before
    assert shop.payment_faults.requests("Refund") == []
    cancelled = shop.orders().CancelOrder(pb.CancelOrderRequest(order_id=order.id), timeout=10, metadata=ALICE)
    assert cancelled.status == pb.CANCELLED


def test_a_customer_lists_their_own_orders_and_an_admin_lists_all(shop):
    alices = [place(shop.orders(), customer_id="", metadata=ALICE).id for _ in range(3)]
    bobs = place(shop.orders(), customer_id="", metadata=BOB).id

    assert [o.id for o in list_orders(shop, ALICE).orders] == alices[::-1]
    first = list_orders(shop, ALICE, page_size=2)
    rest = list_orders(shop, ALICE, page_size=2, page_token=first.next_page_token)
    assert [o.id for o in [*first.orders, *rest.orders]] == alices[::-1]
    error = refused(list_orders, shop, ALICE, customer_id="bob")
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")

    assert [o.id for o in list_orders(shop, ADMIN).orders] == [bobs, *alices[::-1]]
    assert [o.id for o in list_orders(shop, ADMIN, customer_id="bob").orders] == [bobs]


@harness.sqlite_only
def test_an_admin_sees_and_cancels_any_order_and_names_the_customer_to_order_for(shop):
    order = place(shop.orders(), customer_id="", metadata=ALICE)
    assert get_order(shop, order.id, ADMIN).customer_id == "alice"
    cancelled = shop.orders().CancelOrder(pb.CancelOrderRequest(order_id=order.id), timeout=10, metadata=ADMIN)
    assert cancelled.status == pb.CANCELLED

    assert place(shop.orders(), customer_id="bob", metadata=ADMIN).customer_id == "bob"
    error = refused(place, shop.orders(), customer_id="", metadata=ADMIN)
    assert [field for field, _ in error.violations] == ["customer_id"]


@harness.sqlite_only
def test_without_identity_metadata_no_ownership_rule_applies(shop):
    order = place(shop.orders(), customer_id="", metadata=ALICE)
    assert get_order(shop, order.id).id == order.id
    assert [o.id for o in list_orders(shop).orders] == [order.id]
    assert place(shop.orders(), customer_id="bob").customer_id == "bob"


@harness.sqlite_only
def test_idempotency_keys_are_scoped_to_the_signed_in_customer(shop):
    key = [("idempotency-key", "same-key")]
    alices = place(shop.orders(), customer_id="", metadata=ALICE + key)
    # Bob's request with the same key and another body is a new order, not a
    # 422 that would name Alice's order.
    bobs = place(shop.orders(), customer_id="", items=(("P002", 1),), metadata=BOB + key)
    assert bobs.id != alices.id and bobs.customer_id == "bob"
    assert place(shop.orders(), customer_id="", metadata=ALICE + key).id == alices.id


@pytest.mark.parametrize(
    "metadata",
    [[("x-shop-subject", "not a customer")], [("x-shop-scopes", ADMIN_SCOPE)], [("x-shop-subject", "")]],
    ids=["malformed", "scopes-without-subject", "empty"],
)
@harness.sqlite_only
def test_identity_metadata_without_a_valid_subject_is_refused_not_ignored(shop, metadata):
    order = place(shop.orders())
    error = refused(get_order, shop, order.id, metadata)
    assert error.code == grpc.StatusCode.UNAUTHENTICATED


# Payments and payment methods


def test_a_customers_payment_method_is_theirs_alone(shop):
    method_id = card_method_as(shop, ALICE)
    stub = shop.payment_stub()
    request = pay.GetPaymentMethodRequest(payment_method_id=method_id)

    assert stub.GetPaymentMethod(request, timeout=10, metadata=ALICE).card_last4 == "4242"
    assert stub.GetPaymentMethod(request, timeout=10, metadata=ADMIN).id == method_id
    assert stub.GetPaymentMethod(request, timeout=10).id == method_id
    theirs = refused(stub.GetPaymentMethod, request, timeout=10, metadata=BOB)
    never_issued = "pm_" + "0" * 24
    unknown = refused(
        stub.GetPaymentMethod, pay.GetPaymentMethodRequest(payment_method_id=never_issued), timeout=10, metadata=BOB
    )
    assert as_error_of_unknown(theirs, method_id, never_issued) == as_error_of_unknown(unknown, "", "")
    # Test tokens are anyone's.
    token = stub.GetPaymentMethod(pay.GetPaymentMethodRequest(payment_method_id="tok_visa"), timeout=10, metadata=BOB)
    assert token.card_brand == "visa"


@harness.sqlite_only
def test_a_payment_method_made_without_identity_is_seen_by_admins_only(shop):
    method_id = card_method(shop, "4242424242424242")
    stub = shop.payment_stub()
    request = pay.GetPaymentMethodRequest(payment_method_id=method_id)
    assert refused(stub.GetPaymentMethod, request, timeout=10, metadata=ALICE).code == grpc.StatusCode.NOT_FOUND
    assert stub.GetPaymentMethod(request, timeout=10, metadata=ADMIN).id == method_id


def test_another_customers_payment_method_in_an_order_is_an_unknown_method(shop):
    bobs_method = card_method_as(shop, BOB)
    never_issued = "pm_" + "0" * 24
    before = stock(shop, "P001")

    theirs = refused(place, shop.orders(), customer_id="", payment_method=bobs_method, metadata=ALICE)
    unknown = refused(place, shop.orders(), customer_id="", payment_method=never_issued, metadata=ALICE)

    assert theirs.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (theirs.code, theirs.reason, theirs.violations) == (unknown.code, unknown.reason, unknown.violations)
    assert theirs.message.replace(theirs.metadata["order_id"], "") == unknown.message.replace(
        unknown.metadata["order_id"], ""
    )
    order = get_order(shop, theirs.metadata["order_id"], ALICE)
    assert order.status == pb.FAILED
    assert payments_of(shop, order.id) == []
    assert stock(shop, "P001") == before
    # Their own method, and an unowned one only without identity (AUTH=off).
    assert place(shop.orders(), customer_id="", payment_method=card_method_as(shop, ALICE), metadata=ALICE).status == pb.CONFIRMED
    unowned = card_method(shop, "4242424242424242")
    assert refused(place, shop.orders(), customer_id="", payment_method=unowned, metadata=ALICE).code == grpc.StatusCode.INVALID_ARGUMENT
    assert place(shop.orders(), customer_id="alice", payment_method=unowned).status == pb.CONFIRMED


def test_an_admins_order_is_charged_only_on_a_method_its_customer_owns(shop):
    """An admin orders for a customer; the order is the customer's, and so
    must be the card: another's, the admin's own or an unowned one is unknown."""
    bobs, admins, unowned = card_method_as(shop, BOB), card_method_as(shop, ADMIN), card_method(shop, "4242424242424242")
    before = stock(shop, "P001")
    for method in (bobs, admins, unowned):
        error = refused(place, shop.orders(), customer_id="alice", payment_method=method, metadata=ADMIN)
        assert (error.code, [field for field, _ in error.violations]) == (grpc.StatusCode.INVALID_ARGUMENT, ["payment_method"])
        order = get_order(shop, error.metadata["order_id"], ADMIN)
        assert (order.customer_id, order.status) == ("alice", pb.FAILED)
        assert payments_of(shop, order.id) == []
    assert stock(shop, "P001") == before
    alices = card_method_as(shop, ALICE)
    assert place(shop.orders(), customer_id="alice", payment_method=alices, metadata=ADMIN).status == pb.CONFIRMED
    assert place(shop.orders(), customer_id="alice", payment_method="tok_visa", metadata=ADMIN).status == pb.CONFIRMED


def test_another_customers_payments_are_not_found_and_list_as_an_unknown_order(shop):
    order = place(shop.orders(), customer_id="", metadata=ALICE)
    (payment,) = payments_of(shop, order.id)
    stub = shop.payment_stub()

    assert stub.GetPayment(pay.GetPaymentRequest(payment_id=payment.id), timeout=10, metadata=ALICE).id == payment.id
    assert stub.GetPayment(pay.GetPaymentRequest(payment_id=payment.id), timeout=10, metadata=ADMIN).id == payment.id
    theirs = refused(stub.GetPayment, pay.GetPaymentRequest(payment_id=payment.id), timeout=10, metadata=BOB)
    unknown_id = "pay_" + "0" * 24
    unknown = refused(stub.GetPayment, pay.GetPaymentRequest(payment_id=unknown_id), timeout=10, metadata=BOB)
    assert as_error_of_unknown(theirs, payment.id, unknown_id) == as_error_of_unknown(unknown, "", "")

    def listed(order_id, metadata):
        return stub.ListPayments(pay.ListPaymentsRequest(order_id=order_id), timeout=10, metadata=metadata)

    assert [p.id for p in listed(order.id, ALICE).payments] == [payment.id]
    assert listed(order.id, BOB) == listed(UNKNOWN_ORDER, BOB) == pay.ListPaymentsResponse()
    assert [p.id for p in listed(order.id, ADMIN).payments] == [payment.id]


def card_method_as(shop, metadata, number="4242424242424242") -> str:
    card = pay.Card(number=number, exp_month=12, exp_year=2099, cvc="123")
    request = pay.CreatePaymentMethodRequest(card=card)
    return shop.payment_stub().CreatePaymentMethod(request, timeout=10, metadata=metadata).id


# Admin RPCs


@harness.sqlite_only
def test_admin_rpcs_need_the_admin_scope_when_an_identity_is_sent(shop):
    stub = shop.inventory_stub()
    request = inv.AdjustStockRequest(product_id="P001", delta=5, reason="restock")
    before = stock(shop, "P001")["P001"]

    error = refused(stub.AdjustStock, request, timeout=10, metadata=ALICE)

    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert stock(shop, "P001")["P001"] == before
    assert stub.AdjustStock(request, timeout=10, metadata=ADMIN).available == before + 5
    assert stub.AdjustStock(request, timeout=10).available == before + 10


# Databases made before owners were kept


def test_a_payment_database_from_before_owners_upgrades_and_its_rows_stay_admin_only(database_url):
    url = database_url("payment")
    engine = db.open_engine(url)
    # The database as the first migration made it, with one method in it.
    migrations.migrate(engine, payment_store.metadata, payment_store.MIGRATIONS[:1])
    with engine.begin() as conn:
        for table in (payment_store.payment_methods, payment_store.payments):
            conn.execute(sa.text(f"ALTER TABLE {table.name} DROP COLUMN customer_id"))
        conn.execute(
            sa.text(
                "INSERT INTO payment_methods (id, card_brand, card_last4, exp_month, exp_year, processor_outcome, "
                "created_at) VALUES ('pm_0123456789abcdef01234567', 'visa', '4242', 12, 2099, 'approve', "
                "CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()

    running = harness.run_payment(url)
    try:
        from shop.payment.v1 import payment_pb2_grpc

        stub = payment_pb2_grpc.PaymentServiceStub(running.channel())
        request = pay.GetPaymentMethodRequest(payment_method_id="pm_0123456789abcdef01234567")
        assert stub.GetPaymentMethod(request, timeout=10, metadata=ADMIN).card_last4 == "4242"
        assert refused(stub.GetPaymentMethod, request, timeout=10, metadata=ALICE).code == grpc.StatusCode.NOT_FOUND
        made = stub.CreatePaymentMethod(
            pay.CreatePaymentMethodRequest(card=pay.Card(number="4242424242424242", exp_month=12, exp_year=2099, cvc="123")),
            timeout=10,
            metadata=ALICE,
        )
        assert stub.GetPaymentMethod(pay.GetPaymentMethodRequest(payment_method_id=made.id), timeout=10, metadata=ALICE)
    finally:
        running.stop()
