"""python -m payment_svc: read config, build the store and servicer, serve."""

from sqlalchemy.engine import Engine

from payment_svc.server import SERVICE_NAME, PaymentServicer
from payment_svc.store import PaymentStore
from plumbing.config import ServerConfig, exits_on_config_error
from plumbing.server import Composed, Service, run_service
from shop.payment.v1 import payment_pb2_grpc


def compose(engine: Engine) -> Composed:
    store = PaymentStore(engine)
    servicer = PaymentServicer(store)
    return Composed([Service(SERVICE_NAME, servicer, payment_pb2_grpc.add_PaymentServiceServicer_to_server)], store.migrate)


@exits_on_config_error("payment: refusing to start")
def main() -> None:
    run_service(ServerConfig.from_env("payment"), compose)


if __name__ == "__main__":
    main()
