"""InventoryService against an in-process server, on SQLite and PostgreSQL."""

import sqlite3
import threading

import grpc
import pytest

from inventory_svc.server import SERVICE_NAME
from plumbing.channels import open_channel
from plumbing.errors import RETRY_PUSHBACK_KEY, from_rpc_error
from shop.inventory.v1 import inventory_pb2 as pb
from shop.inventory.v1 import inventory_pb2_grpc
from tests import harness


@pytest.fixture
def inventory(database_url):
    running = harness.run_inventory(database_url("inventory"))
    yield running
    running.stop()


@pytest.fixture
def stub(inventory):
    return inventory_pb2_grpc.InventoryServiceStub(inventory.channel())


def error_of(call, *args):
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=10)
    return from_rpc_error(info.value)


def available(stub, product_id):
    return stub.GetProduct(pb.GetProductRequest(product_id=product_id), timeout=10).available


def items(*pairs):
    return [pb.Item(product_id=p, quantity=q) for p, q in pairs]


def test_seed_catalog_lists_at_least_ten_products_in_id_order(stub):
    products = stub.ListProducts(pb.ListProductsRequest(), timeout=10).products
    ids = [p.product_id for p in products]
    assert ids[:10] == [f"P{n:03d}" for n in range(1, 11)]
    assert all(p.name and p.price_cents > 0 and p.currency == "USD" for p in products)


def test_get_product_returns_price_in_cents(stub):
    product = stub.GetProduct(pb.GetProductRequest(product_id="P001"), timeout=10)
    assert (product.name, product.price_cents, product.currency) == ("Wireless Mouse", 1999, "USD")


def test_unknown_product_is_not_found(stub):
    error = error_of(stub.GetProduct, pb.GetProductRequest(product_id="P999"))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    # API.md: the ErrorInfo's metadata names it as product_id.
    assert error.metadata["product_id"] == "P999"


def test_malformed_product_id_is_invalid_with_field_violation(stub):
    error = error_of(stub.GetProduct, pb.GetProductRequest(product_id="../etc"))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in error.violations] == ["product_id"]


def test_check_availability_reports_each_item(stub):
    answer = stub.CheckAvailability(
        pb.CheckAvailabilityRequest(items=items(("P001", 2), ("P010", 11))), timeout=10
    )
    assert answer.available is False
    by_id = {i.product_id: i for i in answer.items}
    assert by_id["P001"].in_stock and not by_id["P010"].in_stock
    assert by_id["P010"].available == 10


def test_check_availability_accepts_the_flat_form(stub):
    answer = stub.CheckAvailability(pb.CheckAvailabilityRequest(product_id="P001", quantity=2), timeout=10)
    assert answer.available and answer.items[0].quantity == 2


def test_check_availability_rejects_bad_items_naming_each(stub):
    error = error_of(
        stub.CheckAvailability,
        pb.CheckAvailabilityRequest(items=items(("P001", 0), ("bad id", 1), ("P002", 1001))),
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in error.violations} == {
        "items[0].quantity",
        "items[1].product_id",
        "items[2].quantity",
    }


def test_upsert_creates_then_updates_only_given_fields(stub):
    created = stub.UpsertProduct(
        pb.UpsertProductRequest(product_id="P100", name="Cable", price_cents=499, available=5), timeout=10
    )
    assert (created.currency, created.available) == ("USD", 5)
    updated = stub.UpsertProduct(pb.UpsertProductRequest(product_id="P100", price_cents=599), timeout=10)
    assert (updated.name, updated.price_cents, updated.available) == ("Cable", 599, 5)


def test_upsert_of_new_product_without_name_and_price_changes_nothing(stub):
    error = error_of(stub.UpsertProduct, pb.UpsertProductRequest(product_id="P101", available=3))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in error.violations} == {"name", "price_cents"}
    assert error_of(stub.GetProduct, pb.GetProductRequest(product_id="P101")).code == grpc.StatusCode.NOT_FOUND


def test_upsert_rejects_bad_fields(stub):
    error = error_of(
        stub.UpsertProduct,
        pb.UpsertProductRequest(product_id="P001", name="", price_cents=-1, currency="usd", available=-2),
    )
    assert {f for f, _ in error.violations} == {"name", "price_cents", "currency", "available"}
    assert available(stub, "P001") == 100


def test_adjust_stock_adds_and_removes(stub):
    assert stub.AdjustStock(pb.AdjustStockRequest(product_id="P001", delta=25, reason="restock"), timeout=10).available == 125
    assert stub.AdjustStock(pb.AdjustStockRequest(product_id="P001", delta=-120), timeout=10).available == 5


def test_adjust_stock_below_zero_is_out_of_stock_and_changes_nothing(stub):
    error = error_of(stub.AdjustStock, pb.AdjustStockRequest(product_id="P010", delta=-11))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OUT_OF_STOCK")
    assert available(stub, "P010") == 10


def test_adjust_stock_of_unknown_product_is_not_found(stub):
    assert error_of(stub.AdjustStock, pb.AdjustStockRequest(product_id="P999", delta=1)).code == grpc.StatusCode.NOT_FOUND


def test_zero_adjustment_is_invalid(stub):
    assert error_of(stub.AdjustStock, pb.AdjustStockRequest(product_id="P001", delta=0)).code == grpc.StatusCode.INVALID_ARGUMENT


def test_reserve_takes_stock_and_returns_authoritative_prices(stub):
    reservation = stub.Reserve(pb.ReserveRequest(order_id="o1", items=items(("P001", 2), ("P002", 1))), timeout=10)
    assert reservation.status == pb.RESERVED
    assert {(i.product_id, i.quantity, i.unit_price_cents) for i in reservation.items} == {
        ("P001", 2, 1999),
        ("P002", 1, 8999),
    }
    assert (available(stub, "P001"), available(stub, "P002")) == (98, 49)


def test_reserve_merges_a_product_listed_twice(stub):
    reservation = stub.Reserve(pb.ReserveRequest(order_id="o1", items=items(("P001", 2), ("P001", 3))), timeout=10)
    assert [(i.product_id, i.quantity) for i in reservation.items] == [("P001", 5)]
    assert available(stub, "P001") == 95


def test_reserve_is_all_or_nothing(stub):
    error = error_of(stub.Reserve, pb.ReserveRequest(order_id="o1", items=items(("P001", 2), ("P010", 11))))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OUT_OF_STOCK")
    assert error.metadata["product_id"] == "P010"
    assert error.message == "P010: 11 requested, 10 available"
    assert (available(stub, "P001"), available(stub, "P010")) == (100, 10)


def test_repeated_reserve_takes_stock_once(stub):
    request = pb.ReserveRequest(order_id="o1", items=items(("P001", 2)))
    first = stub.Reserve(request, timeout=10)
    again = stub.Reserve(request, timeout=10)
    assert first == again
    assert available(stub, "P001") == 98


def test_repeated_release_returns_stock_once(stub):
    stub.Reserve(pb.ReserveRequest(order_id="o1", items=items(("P001", 2))), timeout=10)
    for _ in range(3):
        assert stub.Release(pb.ReleaseRequest(order_id="o1"), timeout=10).status == pb.RELEASED
    assert available(stub, "P001") == 100


def test_reserve_after_release_is_refused(stub):
    stub.Reserve(pb.ReserveRequest(order_id="o1", items=items(("P001", 2))), timeout=10)
    stub.Release(pb.ReleaseRequest(order_id="o1"), timeout=10)
    error = error_of(stub.Reserve, pb.ReserveRequest(order_id="o1", items=items(("P001", 2))))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_RELEASED")
    assert available(stub, "P001") == 100


def test_release_before_reserve_leaves_a_tombstone_that_refuses_a_late_reserve(stub):
    assert stub.Release(pb.ReleaseRequest(order_id="late"), timeout=10).status == pb.RELEASED
    error = error_of(stub.Reserve, pb.ReserveRequest(order_id="late", items=items(("P001", 1))))
    assert error.reason == "RESERVATION_RELEASED"
    assert available(stub, "P001") == 100


def test_fifty_threads_reserving_the_last_ten_units_leave_exactly_zero(stub):
    results: list[bool] = []
    barrier = threading.Barrier(50)

    def buy(n):
        barrier.wait()
        try:
            stub.Reserve(pb.ReserveRequest(order_id=f"race-{n}", items=items(("P010", 1))), timeout=30)
            results.append(True)
        except grpc.RpcError as error:
            assert from_rpc_error(error).reason == "OUT_OF_STOCK"
            results.append(False)

    threads = [threading.Thread(target=buy, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 10
    assert available(stub, "P010") == 0


def test_adjustments_beside_concurrent_reservations_never_go_negative(stub):
    errors = []

    def reserve(n):
        try:
            stub.Reserve(pb.ReserveRequest(order_id=f"mix-{n}", items=items(("P010", 1))), timeout=30)
        except grpc.RpcError as error:
            errors.append(from_rpc_error(error).reason)

    def remove():
        try:
            stub.AdjustStock(pb.AdjustStockRequest(product_id="P010", delta=-3), timeout=30)
        except grpc.RpcError as error:
            errors.append(from_rpc_error(error).reason)

    threads = [threading.Thread(target=reserve, args=(n,)) for n in range(10)]
    threads += [threading.Thread(target=remove) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(errors) <= {"OUT_OF_STOCK"}
    assert available(stub, "P010") >= 0


def test_seed_runs_only_into_an_empty_database(database_url):
    url = database_url("inventory")
    first = harness.run_inventory(url)
    stub = inventory_pb2_grpc.InventoryServiceStub(first.channel())
    stub.AdjustStock(pb.AdjustStockRequest(product_id="P001", delta=-100), timeout=10)
    first.stop()
    second = harness.run_inventory(url)
    stub = inventory_pb2_grpc.InventoryServiceStub(second.channel())
    try:
        assert available(stub, "P001") == 0
    finally:
        second.stop()


def test_a_reserve_that_finds_the_database_locked_answers_unavailable_once_not_retried_into_a_timeout(
    sqlite_url, monkeypatch
):
    # The saga's channel retries UNAVAILABLE (a replica gone); a locked
    # database is shared by every replica, so the service tells the client
    # not to (gRFC A6 pushback): the caller learns UNAVAILABLE, within its
    # deadline, instead of DEADLINE_EXCEEDED after a useless second attempt.
    harness.widen_answer_margin(monkeypatch, 1.0)
    url = sqlite_url("inventory")
    running = harness.run_inventory(url)
    channel = open_channel(running.address, SERVICE_NAME, 5.0, ("Reserve",))
    locker = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Reserve(pb.ReserveRequest(order_id="o-locked", items=items(("P001", 1))), timeout=2.0)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "locked" in raised.value.details()
        assert dict(raised.value.trailing_metadata())[RETRY_PUSHBACK_KEY] == "-1"
    finally:
        locker.execute("ROLLBACK")
        locker.close()
        channel.close()
        running.stop()
