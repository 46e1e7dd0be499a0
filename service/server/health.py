"""grpc.health.v1.Health with List: grpcio-health-checking's asyncio servicer leaves List unimplemented (its
callers got UNIMPLEMENTED naming a Python exception), though the proto it serves declares it."""

from grpc_health.v1 import health, health_pb2


class HealthServicer(health.aio.HealthServicer):
    def __init__(self, names: tuple[str, ...]):
        super().__init__()
        self.names = names

    async def List(self, request, context):
        statuses = {name: await self.Check(health_pb2.HealthCheckRequest(service=name), context) for name in self.names}
        return health_pb2.HealthListResponse(statuses=statuses)
