"""OrderService over gRPC: proto <-> domain, and nothing else. Each request
has passed its field rules (declared in the proto) already."""


from order_svc import checks
from order_svc.model import Order, OrderRequest
from order_svc.saga import OrderSaga
from plumbing.identity import current_caller, customer_for
from plumbing.timestamps import to_timestamp
from plumbing.validation import Violations, requested_items
from shop.order.v1 import order_pb2 as pb
from shop.order.v1 import order_pb2_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OrderService"].full_name
IDEMPOTENCY_KEY = "idempotency-key"


def order_to_pb(order: Order) -> pb.Order:
    return pb.Order(
        id=order.id,
        customer_id=order.customer_id,
        status=pb.OrderStatus.Value(order.status),
        items=[
            pb.OrderItem(product_id=i.product_id, quantity=i.quantity, unit_price_cents=i.unit_price_cents)
            for i in order.items
        ],
        total_cents=order.total_cents,
        currency=order.currency,
        payment_id=order.payment_id,
        created_at=to_timestamp(order.created_at),
        updated_at=to_timestamp(order.updated_at),
    )


def _metadata_value(context, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value
    return None


class OrderServicer(order_pb2_grpc.OrderServiceServicer):
    def __init__(self, saga: OrderSaga):
        self.saga = saga

    def CreateOrder(self, request, context):
        # Everything is checked before the order is stored.
        caller = current_caller()
        customer_id = customer_for(caller, request.customer_id)
        violations = Violations()
        if not customer_id:
            # Left out of the body, it is the signed-in customer (AUTH=jwt); without one, required.
            violations.add("customer_id", "is required")
        items = requested_items(request)
        payment_method = request.payment_method or checks.DEFAULT_PAYMENT_METHOD
        key = checks.check_idempotency_key(violations, _metadata_value(context, IDEMPOTENCY_KEY))
        violations.raise_if_any()
        # A payment method is usable only by its owner, whoever places the order.
        owner_only = caller is not None
        order = self.saga.place_order(
            OrderRequest(customer_id, tuple(items), payment_method, key, owner_only),
            caller_gone=lambda: not context.is_active(),
        )
        return order_to_pb(order)

    def GetOrder(self, request, context):
        return order_to_pb(self.saga.get_order(request.order_id, current_caller()))

    def ListOrders(self, request, context):
        customer_id = customer_for(current_caller(), request.customer_id)
        violations = Violations()
        page_size, cursor = checks.check_page(violations, customer_id, request.page_size, request.page_token)
        violations.raise_if_any()
        page = self.saga.list_orders(customer_id, page_size, cursor)
        return pb.ListOrdersResponse(
            orders=[order_to_pb(o) for o in page.orders], next_page_token=checks.encode_page_token(page.next_cursor)
        )

    def CancelOrder(self, request, context):
        return order_to_pb(self.saga.cancel_order(request.order_id, current_caller()))

    def close(self) -> None:
        self.saga.close()
