"""python -m inventory_svc: read config, build the store and servicer, serve."""

from inventory_svc.server import SERVICE_NAME, InventoryServicer
from inventory_svc.store import InventoryStore
from plumbing import db
from plumbing.config import ServerConfig, exits_on_config_error
from plumbing.logs import setup_logging
from plumbing.readiness import DatabaseReadiness
from plumbing.server import Service, serve, serve_as_group
from shop.inventory.v1 import inventory_pb2_grpc


@exits_on_config_error("inventory: refusing to start")
def main() -> None:
    config = ServerConfig.from_env("inventory")
    setup_logging("inventory", config.log.level, config.log.format)
    if serve_as_group(config):
        return
    engine = db.open_engine(config.database_url, pool_size=config.workers)
    store = InventoryStore(engine)
    servicer = InventoryServicer(store)
    service = Service(SERVICE_NAME, servicer, inventory_pb2_grpc.add_InventoryServiceServicer_to_server)
    serve(config, [service], on_stop=engine.dispose, database=DatabaseReadiness(engine, store.migrate))


if __name__ == "__main__":
    main()
