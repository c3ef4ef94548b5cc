"""Server reflection under both names clients ask for: grpc.reflection.v1
(newer grpcurl, Postman) and grpc.reflection.v1alpha (grpcurl 1.8 and older).

grpcio-reflection serves v1alpha only (grpc/grpc#38576). v1 is the same
protocol renamed: the same messages, field for field, under package
grpc.reflection.v1. So v1 is the v1alpha servicer under the v1 name, and its
descriptors (the v1alpha file, renamed) join the pool, so that reflection can
describe itself under either name.

And upb's descriptor pool finds the file of a service, a message or a field by
name, but not of a method (grpc/grpc#34743): `grpcurl describe
shop.inventory.v1.InventoryService.GetProduct` answered "Symbol not found".
The servicer reads its pool through `MethodAwarePool`, which finds them.
"""

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptors(pool: descriptor_pool.DescriptorPool) -> None:
    """grpc/reflection/v1/reflection.proto, built from the v1alpha file."""
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    alpha_package = reflection_pb2.DESCRIPTOR.package
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = V1_FILE, V1_PACKAGE
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(f".{alpha_package}.", f".{V1_PACKAGE}.")
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(f".{alpha_package}.", f".{V1_PACKAGE}.")
            method.output_type = method.output_type.replace(f".{alpha_package}.", f".{V1_PACKAGE}.")
    pool.Add(proto)


class MethodAwarePool:
    """A descriptor pool, as the reflection servicer reads it, that also finds
    the file a method is declared in."""

    def __init__(self, pool: descriptor_pool.DescriptorPool):
        self._pool = pool

    def __getattr__(self, name: str):
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str):  # noqa: N802 (the pool's name)
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            # KeyError again when it is no method either: reflection's "not found".
            return self._pool.FindMethodByName(symbol).containing_service.file


def enable_reflection(service_names: list[str], server: grpc.Server) -> None:
    """Serve reflection v1 and v1alpha for `service_names` (and themselves)."""
    pool = descriptor_pool.Default()
    _add_v1_descriptors(pool)
    servicer = reflection.ReflectionServicer(
        [*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME], pool=MethodAwarePool(pool)
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    # The v1 messages are the v1alpha ones on the wire.
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1}),))
