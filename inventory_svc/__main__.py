"""python -m inventory_svc: read config, build the store and servicer, serve."""

from sqlalchemy.engine import Engine

from inventory_svc.server import SERVICE_NAME, InventoryServicer
from inventory_svc.store import InventoryStore
from plumbing.config import ServerConfig, exits_on_config_error
from plumbing.server import Composed, Service, run_service
from shop.inventory.v1 import inventory_pb2_grpc


def compose(engine: Engine) -> Composed:
    store = InventoryStore(engine)
    servicer = InventoryServicer(store)
    return Composed([Service(SERVICE_NAME, servicer, inventory_pb2_grpc.add_InventoryServiceServicer_to_server)], store.migrate)


@exits_on_config_error("inventory: refusing to start")
def main() -> None:
    run_service(ServerConfig.from_env("inventory"), compose)


if __name__ == "__main__":
    main()
