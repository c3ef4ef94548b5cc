"""python -m gateway: the gateway under gunicorn, run in this process so
signals (SIGTERM: graceful stop) reach the server itself.

gthread workers (GATEWAY_WORKERS processes x GATEWAY_THREADS threads); each
worker builds the app, and opens its gRPC channels, after the fork.
"""

import glob
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
import uuid

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from gunicorn.workers.gthread import ThreadWorker

from gateway.config import GatewayConfig
from plumbing.config import ConfigError
from plumbing.logs import formatter, setup_logging

# gunicorn's worker timeout: well past the longest upstream deadline.
_WORKER_TIMEOUT_MARGIN_S = 20


class GatewayLogger(Logger):
    """gunicorn's own lines (boot, worker exits) in the shop's log format."""

    # LOG_FORMAT, set from GatewayConfig before gunicorn builds its logger.
    log_format = "json"

    def setup(self, cfg):
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(formatter("gateway", self.log_format))


# What gunicorn answers before the app sees a request (a request line or
# headers over its limits, a request that is not HTTP), by HTTP status.
_UNREADABLE_REQUESTS = {
    414: "the request line (method, path and query) is too long",
    431: "the request headers are too large",
}


def _write_json_error(sock, status_int: int, reason: str, _message: str) -> None:
    """gunicorn's own error answer in the API's JSON error shape, not its HTML
    page. Its message is left out: it may quote the request line."""
    import grpc

    from gateway.errors import gateway_error

    codes = {403: grpc.StatusCode.PERMISSION_DENIED, 501: grpc.StatusCode.UNIMPLEMENTED}
    code = codes.get(status_int, grpc.StatusCode.INTERNAL if status_int >= 500 else grpc.StatusCode.INVALID_ARGUMENT)
    message = _UNREADABLE_REQUESTS.get(status_int, f"{reason}: the request could not be read as HTTP")
    request_id = uuid.uuid4().hex
    body = json.dumps(gateway_error(code, message, http_status=status_int).body(request_id)).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n\r\n"
    )
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


class GatewayWorker(ThreadWorker):
    """gthread, with gunicorn's own error answers in JSON: the contract's
    "every error is JSON, never an HTML page" holds before the app too."""

    def init_process(self):
        gunicorn_util.write_error = _write_json_error
        super().init_process()


def _forget_dead_worker(_arbiter, worker) -> None:
    # Imported here, not at the top: prometheus_client picks its multiprocess
    # mode on import, after _prepare_metrics_dir has set the directory.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


class GatewayServer(BaseApplication):
    def __init__(self, config: GatewayConfig, started_at: float):
        self.config = config
        self.started_at = started_at
        super().__init__()

    def load_config(self) -> None:
        config = self.config
        GatewayLogger.log_format = config.log.format
        settings = {
            "bind": [f"0.0.0.0:{config.port}"],
            "worker_class": GatewayWorker,
            "workers": config.workers,
            "threads": config.threads,
            "timeout": int(config.upstreams.timeout_s) + _WORKER_TIMEOUT_MARGIN_S,
            # Containers run with a read-only root: no socket under ~/.gunicorn.
            "control_socket_disable": True,
            # The app writes one JSON access line per request itself.
            "accesslog": None,
            "errorlog": "-",
            "loglevel": config.log.level.lower(),
            "logger_class": GatewayLogger,
            "child_exit": _forget_dead_worker,
            "proc_name": "shop-gateway",
        }
        for name, value in settings.items():
            self.cfg.set(name, value)

    def load(self):
        # Runs in each worker, after the fork.
        from gateway.app import create_app

        return create_app(self.config, started_at=self.started_at)


def _prepare_metrics_dir() -> str | None:
    """A fresh PROMETHEUS_MULTIPROC_DIR shared by the workers; returns it when
    this process made it (and so removes it at exit)."""
    existing = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if existing:
        os.makedirs(existing, exist_ok=True)
        # Figures of a previous run would be summed into this one's.
        for stale in glob.glob(os.path.join(existing, "*.db")):
            os.remove(stale)
        return None
    made = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    return made


def _without_password(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def main() -> int:
    try:
        config = GatewayConfig.from_env()
    except ConfigError as error:
        print(f"gateway: refusing to start: {error}", file=sys.stderr, flush=True)
        return 2
    setup_logging("gateway", config.log.level, config.log.format)
    made_dir = _prepare_metrics_dir()
    master_pid = os.getpid()
    logging.getLogger("gateway").info(
        "starting",
        extra={
            "port": config.port,
            "workers": config.workers,
            "threads": config.threads,
            "rate_limit": config.rate_limit,
            "rate_limit_storage": _without_password(config.rate_limit_storage),
            "metrics_dir": os.environ["PROMETHEUS_MULTIPROC_DIR"],
        },
    )
    try:
        GatewayServer(config, started_at=time.time()).run()
    finally:
        # Workers unwind through here too when they exit; only the master cleans up.
        if made_dir and os.getpid() == master_pid:
            shutil.rmtree(made_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
