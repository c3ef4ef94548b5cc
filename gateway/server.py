"""The gateway's HTTP server: granian (HTTP/1.1 parsed in Rust, a WSGI
interface) running GATEWAY_WORKERS worker processes of GATEWAY_THREADS
threads each.

This process is the master. Before it starts the workers it makes what they
share - the Prometheus multiprocess folder and the rate limit's table - and
hands it to them by environment; SIGTERM or SIGINT then stops the workers
gracefully (requests in flight finish) and it removes what it made. Each
worker builds the Flask app, and opens its gRPC channels, in its own process.
"""

import glob
import logging
import os
import re
import shutil
import tempfile
import time

from granian import Granian
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings

from gateway import ratelimit
from gateway.config import DEFAULT_THREADS, GatewayConfig
from plumbing import tracing
from plumbing.logs import setup_logging

log = logging.getLogger("gateway")

# When the master started, for /mesh/traffic-stats' uptime in every worker.
STARTED_AT_ENV = "GATEWAY_STARTED_AT"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A worker that has not finished its requests this long after SIGTERM is
# killed: well past the longest upstream deadline.
_KILL_MARGIN_S = 5
# Request line and headers together (granian answers 431 over it).
_MAX_HEAD_BYTES = 64 * 1024


def serve(config: GatewayConfig) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    run_dir = tempfile.mkdtemp(prefix="gateway-")
    metrics_dir = _metrics_dir(run_dir)
    os.environ[ratelimit.SHARED_DIR_ENV] = run_dir
    os.environ[STARTED_AT_ENV] = repr(time.time())
    for warning in config.start_warnings():
        log.warning(warning)
    log.info(
        "starting",
        extra={
            "port": config.port,
            "workers": config.workers,
            "threads": config.threads,
            "rate_limit": config.rate_limit,
            "rate_limit_storage": config.rate_limit_storage_for_logs,
            "auth": config.auth.mode,
            "metrics_dir": metrics_dir,
            # Calls to the services: mutual TLS as this identity, or plaintext (None).
            "tls_identity": config.upstreams.tls.identity if config.upstreams.tls else None,
        },
    )
    server = Granian(
        "gateway.server:worker_app",
        factory=True,
        interface=Interfaces.WSGI,
        http=HTTPModes.http1,
        address="0.0.0.0",
        port=config.port,
        workers=config.workers,
        blocking_threads=config.threads,
        http1_settings=HTTP1Settings(max_buffer_size=_MAX_HEAD_BYTES),
        respawn_failed_workers=True,
        workers_kill_timeout=int(config.upstreams.timeout_s) + _KILL_MARGIN_S,
        log_level=config.log.level.lower(),
        log_dictconfig=_granian_logging(config),
    )
    try:
        server.serve()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    log.info("stopped")


def worker_app():
    """The WSGI app of one worker process (granian calls this after the fork)."""
    from gateway.app import create_app

    config = GatewayConfig.from_env()
    setup_logging("gateway", config.log.level, config.log.format)
    tracing.setup_tracing("gateway")
    forget_dead_workers(os.environ[METRICS_DIR_ENV])
    return create_app(config, started_at=float(os.environ[STARTED_AT_ENV]))


def _metrics_dir(run_dir: str) -> str:
    """PROMETHEUS_MULTIPROC_DIR, where every worker writes its figures: the
    one set for us, emptied (a previous run's figures would be summed into
    this one's), or a folder in run_dir."""
    existing = os.environ.get(METRICS_DIR_ENV)
    if existing:
        os.makedirs(existing, exist_ok=True)
        for stale in glob.glob(os.path.join(existing, "*.db")):
            os.remove(stale)
        return existing
    made = os.path.join(run_dir, "metrics")
    os.makedirs(made)
    os.environ[METRICS_DIR_ENV] = made
    return made


_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")


def forget_dead_workers(metrics_dir: str) -> None:
    """Drop the live gauges of worker processes that are gone (a respawned
    worker's predecessor), as prometheus_client asks of a multiprocess server.
    Counters and histograms of dead workers stay: their counts happened."""
    from prometheus_client import multiprocess

    for path in glob.glob(os.path.join(metrics_dir, "gauge_live*.db")):
        match = _LIVE_GAUGE_FILE.search(path)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), metrics_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DefaultThreadsMeasured(logging.Filter):
    """Drops granian's warning that the threads are many for the cores: the
    default GATEWAY_THREADS is what measured fastest (docs/performance.md),
    and an operator should not read a WARNING at every default start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Configuration allows spawning up to")


def _granian_logging(config: GatewayConfig) -> dict:
    """granian's own lines (workers starting and stopping) in the shop's format, on stderr."""
    formatter = {"()": "plumbing.logs.formatter", "service": "gateway", "fmt": config.log.format}
    console = {"formatter": "generic", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    if config.threads == DEFAULT_THREADS:
        console["filters"] = ["default_threads"]
    return {
        "filters": {"default_threads": {"()": DefaultThreadsMeasured}},
        "formatters": {"generic": formatter, "access": formatter},
        "handlers": {
            "console": console,
            "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
        },
    }
