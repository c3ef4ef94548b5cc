"""What the gateway sees of the mesh: each backend's standard health check,
for /ready and /mesh/service-status."""

from concurrent.futures import ThreadPoolExecutor

from gateway.upstreams import NOT_SERVING, SERVING, HealthReport, Upstreams

# A probe must answer before its prober gives up, whatever UPSTREAM_TIMEOUT_S is.
HEALTH_CHECK_TIMEOUT_S = 2.0


def check_backends(upstreams: Upstreams, metadata=()) -> list[HealthReport]:
    """Every backend's health, checked in parallel so one hung backend costs
    one timeout, not one per backend."""
    timeout_s = min(HEALTH_CHECK_TIMEOUT_S, upstreams.timeout_s)
    names = list(upstreams.backends)
    with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="health") as pool:
        return list(pool.map(lambda name: upstreams.check_health(name, timeout_s, metadata), names))


def overall_status(reports: list[HealthReport]) -> str:
    serving = sum(report.status == SERVING for report in reports)
    if serving == len(reports):
        return SERVING
    return "DEGRADED" if serving else NOT_SERVING


def service_status(upstreams: Upstreams, metadata=()) -> dict:
    reports = check_backends(upstreams, metadata)
    return {
        "overall": overall_status(reports),
        "backends": {report.backend.name: report.to_json() for report in reports},
    }
