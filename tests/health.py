"""Is a `kvmemo serve` on a loopback port SERVING? For tests and benchmarks alike."""

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
