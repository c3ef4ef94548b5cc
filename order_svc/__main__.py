"""python -m order_svc: read config, build the store, the upstream stubs and
the saga, serve, and run the recovery loop beside it."""

from sqlalchemy.engine import Engine

from order_svc.saga import OrderSaga
from order_svc.server import SERVICE_NAME, OrderServicer
from order_svc.store import OrderStore
from order_svc.upstream import InventoryClient, PaymentClient
from plumbing.channels import open_channel
from plumbing.config import OrderConfig, ServerConfig, exits_on_config_error
from plumbing.server import Composed, Service, run_service
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.order.v1 import order_pb2_grpc
from shop.payment.v1 import payment_pb2, payment_pb2_grpc

INVENTORY_SERVICE = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name
PAYMENT_SERVICE = payment_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name
# Every saga call is idempotent by order_id (or a read), so a call that found
# its replica gone (UNAVAILABLE) is safely sent again, to another one.
INVENTORY_SAGA_METHODS = ("Reserve", "Release")
PAYMENT_SAGA_METHODS = ("Charge", "Void", "Refund", "ListPayments")


def build_saga(config: OrderConfig, store: OrderStore) -> tuple[OrderSaga, list]:
    """The saga and the channels it calls through (to close at the end)."""
    inventory = open_channel(
        config.inventory_addr, INVENTORY_SERVICE, config.downstream_timeout_s, INVENTORY_SAGA_METHODS, config.tls
    )
    payment = open_channel(
        config.payment_addr, PAYMENT_SERVICE, config.downstream_timeout_s, PAYMENT_SAGA_METHODS, config.tls
    )
    saga = OrderSaga(
        store,
        InventoryClient(inventory_pb2_grpc.InventoryServiceStub(inventory)),
        PaymentClient(payment_pb2_grpc.PaymentServiceStub(payment)),
        config,
    )
    return saga, [inventory, payment]


@exits_on_config_error("order: refusing to start")
def main() -> None:
    config = ServerConfig.from_env("order")
    order_config = OrderConfig.from_env()

    def compose(engine: Engine) -> Composed:
        store = OrderStore(engine)
        saga, channels = build_saga(order_config, store)

        def on_stop() -> None:
            saga.close()
            for channel in channels:
                channel.close()

        service = Service(SERVICE_NAME, OrderServicer(saga), order_pb2_grpc.add_OrderServiceServicer_to_server)
        return Composed([service], store.migrate, [saga.recovery.run_recovery, saga.recovery.run_key_retention], on_stop)

    run_service(config, compose)


if __name__ == "__main__":
    main()
