"""ListOrders, on SQLite and PostgreSQL: newest first, by customer, in pages
joined by opaque keyset tokens; bad sizes and tokens are refused."""

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from plumbing.errors import from_rpc_error
from shop.order.v1 import order_pb2 as pb
from tests import harness
from tests.test_order_rules import FORGED_TOKENS


def place(orders, customer_id, payment_method=""):
    request = pb.CreateOrderRequest(
        customer_id=customer_id, items=[pb.Item(product_id="P008", quantity=1)], payment_method=payment_method
    )
    try:
        return orders.CreateOrder(request, timeout=10).id
    except grpc.RpcError as error:
        return from_rpc_error(error).metadata["order_id"]


def list_ids(orders, **fields):
    response = orders.ListOrders(pb.ListOrdersRequest(**fields), timeout=10)
    return [o.id for o in response.orders], response.next_page_token


def every_page(orders, **fields):
    ids, pages, token = [], 0, ""
    while True:
        page, token = list_ids(orders, page_token=token, **fields)
        ids += page
        pages += 1
        if not token:
            return ids, pages


def refused(orders, **fields):
    with pytest.raises(grpc.RpcError) as info:
        orders.ListOrders(pb.ListOrdersRequest(**fields), timeout=10)
    return from_rpc_error(info.value)


def test_orders_are_listed_newest_first_with_every_status(shop):
    orders = shop.orders()
    placed = [place(orders, "C1"), place(orders, "C1", "tok_chargeDeclined"), place(orders, "C2")]

    ids, token = list_ids(orders)

    assert ids == placed[::-1]
    assert token == ""
    statuses = [o.status for o in orders.ListOrders(pb.ListOrdersRequest(), timeout=10).orders]
    assert statuses == [pb.CONFIRMED, pb.PAYMENT_FAILED, pb.CONFIRMED]


def test_customer_filter_lists_only_that_customers_orders(shop):
    orders = shop.orders()
    placed = {customer: [] for customer in ("C1", "C2")}
    for n in range(6):
        customer = "C1" if n % 3 else "C2"
        placed[customer].append(place(orders, customer))

    assert list_ids(orders, customer_id="C1")[0] == placed["C1"][::-1]
    assert list_ids(orders, customer_id="C2")[0] == placed["C2"][::-1]
    assert list_ids(orders, customer_id="C3") == ([], "")


def test_pages_join_up_to_the_whole_list_without_gaps_or_repeats(shop):
    orders = shop.orders()
    placed = [place(orders, "C1" if n % 2 else "C2") for n in range(7)]

    ids, pages = every_page(orders, page_size=2)
    c1_ids, c1_pages = every_page(orders, customer_id="C1", page_size=2)

    assert ids == placed[::-1] and pages == 4
    assert c1_ids == [i for n, i in enumerate(placed) if n % 2][::-1] and c1_pages == 2


def test_a_page_token_skips_nothing_when_orders_arrive_between_pages(shop):
    orders = shop.orders()
    older = [place(orders, "C1") for _ in range(3)]
    first_page, token = list_ids(orders, page_size=2)
    newer = place(orders, "C1")

    second_page, token = list_ids(orders, page_size=2, page_token=token)

    assert first_page == older[:0:-1]
    assert second_page == [older[0]] and token == ""
    assert list_ids(orders)[0][0] == newer


@harness.sqlite_only
def test_page_size_defaults_to_fifty(shop):
    orders = shop.orders()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: place(orders, "C1"), range(51)))

    ids, token = list_ids(orders)
    rest, last = list_ids(orders, page_token=token)

    assert len(ids) == 50 and token
    assert len(rest) == 1 and last == ""
    assert len(set(ids + rest)) == 51


@harness.sqlite_only
@pytest.mark.parametrize("page_size", [201, -1])
def test_page_size_out_of_range_is_refused(shop, page_size):
    error = refused(shop.orders(), page_size=page_size)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error.violations] == ["page_size"]


@harness.sqlite_only
def test_page_size_of_two_hundred_is_accepted(shop):
    assert list_ids(shop.orders(), page_size=200) == ([], "")


@harness.sqlite_only
@pytest.mark.parametrize("token", ["not-a-token", "eyJ0IjoxfQ", "!!!", "e30", *FORGED_TOKENS])
def test_bad_page_token_is_refused(shop, token):
    error = refused(shop.orders(), page_token=token)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error.violations] == ["page_token"]


@harness.sqlite_only
def test_page_token_is_good_only_for_the_filter_it_was_issued_for(shop):
    orders = shop.orders()
    for _ in range(3):
        place(orders, "C1")
    _, token = list_ids(orders, customer_id="C1", page_size=1)

    error = refused(orders, customer_id="C2", page_token=token)

    assert [field for field, _ in error.violations] == ["page_token"]
