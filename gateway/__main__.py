"""python -m gateway: read the settings, then serve HTTP in this process
(gateway/server.py), so signals (SIGTERM: graceful stop) reach the server
itself."""

import sys

from gateway.config import GatewayConfig
from gateway.server import serve
from plumbing import tracing
from plumbing.config import exits_on_config_error
from plumbing.logs import setup_logging
from plumbing.scheduling import schedule_as_batch


@exits_on_config_error("gateway: refusing to start")
def main() -> int:
    config = GatewayConfig.from_env()
    # Before granian starts a thread or a worker: they inherit it.
    schedule_as_batch()
    # Checked here, in the master: a worker refusing it would crash-loop.
    tracing.exporter_protocol()
    setup_logging("gateway", config.log.level, config.log.format)
    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
