"""Start the services in-process on port 0, as the tests use them.

Composition mirrors each service's __main__ (store -> servicer -> server),
so what is tested is what runs.
"""

from dataclasses import dataclass, field

import grpc

from plumbing import db
from plumbing.server import Service, ShopServer


@dataclass
class Running:
    server: ShopServer
    servicer: object
    engine: object
    channels: list = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address)
        self.channels.append(channel)
        return channel

    def stop(self, grace_s: float = 0) -> None:
        for channel in self.channels:
            channel.close()
        self.server.stop(grace_s)
        close = getattr(self.servicer, "close", None)
        if close:
            close()
        self.engine.dispose()


def start(service: Service, engine, port: int = 0) -> Running:
    server = ShopServer([service], port, workers=16, max_concurrent_rpcs=256, host="127.0.0.1").start()
    return Running(server, service.servicer, engine)


def run_inventory(database_url: str, port: int = 0) -> Running:
    from inventory_svc.server import SERVICE_NAME, InventoryServicer
    from inventory_svc.store import InventoryStore
    from shop.inventory.v1 import inventory_pb2_grpc

    engine = db.open_engine(database_url)
    servicer = InventoryServicer(InventoryStore(engine))
    return start(Service(SERVICE_NAME, servicer, inventory_pb2_grpc.add_InventoryServiceServicer_to_server), engine, port)


def run_payment(database_url: str, port: int = 0) -> Running:
    from payment_svc.server import SERVICE_NAME, PaymentServicer
    from payment_svc.store import PaymentStore
    from shop.payment.v1 import payment_pb2_grpc

    engine = db.open_engine(database_url)
    servicer = PaymentServicer(PaymentStore(engine))
    return start(Service(SERVICE_NAME, servicer, payment_pb2_grpc.add_PaymentServiceServicer_to_server), engine, port)
