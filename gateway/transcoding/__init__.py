"""HTTP <-> gRPC transcoding driven by the protos, along grpc-gateway's seams:

- routes.py: the route table, from each public RPC's google.api.http rule
  and its shop.api.v1.http options;
- binding.py: a route's request message from its path, query and JSON body;
- rendering.py: a response message as the API's JSON, and its Location;
- json_types.py: how each protobuf type looks in JSON (shared with
  gateway/openapi.py).
"""

from gateway.transcoding.binding import RequestError, build_request
from gateway.transcoding.rendering import location_for, message_to_json, response_json
from gateway.transcoding.routes import Binding, route_table

__all__ = [
    "Binding",
    "RequestError",
    "build_request",
    "location_for",
    "message_to_json",
    "response_json",
    "route_table",
]
