"""python -m gateway: read the settings, then serve HTTP in this process
(gateway/server.py), so signals (SIGTERM: graceful stop) reach the server
itself."""

import sys

from gateway.config import GatewayConfig
from gateway.server import serve
from plumbing import tracing
from plumbing.config import ConfigError
from plumbing.logs import setup_logging


def main() -> int:
    try:
        config = GatewayConfig.from_env()
        # Checked here, in the master: a worker refusing it would crash-loop.
        tracing.exporter_protocol()
    except ConfigError as error:
        print(f"gateway: refusing to start: {error}", file=sys.stderr, flush=True)
        return 2
    setup_logging("gateway", config.log.level, config.log.format)
    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
