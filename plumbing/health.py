"""grpc.health.v1 as every service serves it: "" is the process's liveness
(SERVING until its shutdown begins), a service's own name its readiness
(NOT_SERVING too while it waits for its database). A Check answered
NOT_SERVING says why in trailing metadata REASON_KEY, which the gateway's
/ready and /mesh/service-status show."""

from grpc_health.v1 import health, health_pb2

REASON_KEY = "shop-not-serving-reason"
SHUTTING_DOWN = "shutting down"


class HealthServicer(health.HealthServicer):
    """grpc's health servicer, telling a Check answered NOT_SERVING why."""

    reason = ""

    def Check(self, request, context):
        response = super().Check(request, context)
        reason = self.reason
        if reason and response.status == health_pb2.HealthCheckResponse.NOT_SERVING:
            context.set_trailing_metadata(((REASON_KEY, reason),))
        return response
