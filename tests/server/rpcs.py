"""Every RPC the server serves, called with raw bytes on a generic channel (no stubs, no serialization), so a
test can send what no well-behaved client would."""

from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from service.proto.inference import grpc_service_pb2
from service.proto.kvmemo.v1 import kvmemo_pb2


@dataclass(frozen=True)
class Method:
    path: str  # /package.Service/Method
    input_type: str
    client_streaming: bool
    server_streaming: bool
    input_descriptor: object = field(compare=False, repr=False, default=None)


def methods_of(file_descriptor) -> list[Method]:
    return [Method(f"/{service.full_name}/{m.name}", m.input_type.full_name, m.client_streaming, m.server_streaming,
                   m.input_type) for service in file_descriptor.services_by_name.values() for m in service.methods]


EVERY_METHOD = [m for module in (kvmemo_pb2, grpc_service_pb2, health_pb2, reflection_pb2)
                for m in methods_of(module.DESCRIPTOR)]
def raw_call(channel: grpc.Channel, method: Method, payloads: list[bytes], timeout: float = 60,
             max_replies: int | None = None):
    """Sends payloads (the first only, to a unary-request method); returns (status code, details, raw replies).
    A server stream with a single request is read for one reply only (Health.Watch never ends); one fed by a
    request stream is read to its end, or to max_replies."""
    max_replies = max_replies or (1000 if method.client_streaming else 1)
    identity = dict(request_serializer=None, response_deserializer=None)
    replies = []
    try:
        if method.client_streaming:
            call = (channel.stream_stream if method.server_streaming else channel.stream_unary)(method.path, **identity)
            result = call(iter(payloads), timeout=timeout)
        else:
            call = (channel.unary_stream if method.server_streaming else channel.unary_unary)(method.path, **identity)
            result = call(payloads[0], timeout=timeout)
        if not method.server_streaming:
            return grpc.StatusCode.OK, "", [result]
        for reply in result:
            replies.append(reply)
            if len(replies) == max_replies:
                result.cancel()
                break
        return grpc.StatusCode.OK, "", replies
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.CANCELLED and len(replies) == max_replies:
            return grpc.StatusCode.OK, "", replies
        return e.code(), e.details() or "", replies
