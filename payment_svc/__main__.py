"""python -m payment_svc: read config, build the store and servicer, serve."""

from payment_svc.server import SERVICE_NAME, PaymentServicer
from payment_svc.store import PaymentStore
from plumbing import db
from plumbing.config import ServerConfig, exits_on_config_error
from plumbing.logs import setup_logging
from plumbing.readiness import DatabaseReadiness
from plumbing.server import Service, serve, serve_as_group
from shop.payment.v1 import payment_pb2_grpc


@exits_on_config_error("payment: refusing to start")
def main() -> None:
    config = ServerConfig.from_env("payment")
    setup_logging("payment", config.log.level, config.log.format)
    if serve_as_group(config):
        return
    engine = db.open_engine(config.database_url, pool_size=config.workers)
    store = PaymentStore(engine)
    servicer = PaymentServicer(store)
    service = Service(SERVICE_NAME, servicer, payment_pb2_grpc.add_PaymentServiceServicer_to_server)
    serve(config, [service], on_stop=engine.dispose, database=DatabaseReadiness(engine, store.migrate))


if __name__ == "__main__":
    main()
