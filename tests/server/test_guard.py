"""The guard on every handler, on an in-process grpc.aio server over loopback: a servicer's bug becomes
INTERNAL naming no Python class, a malformed message INVALID_ARGUMENT, whatever the service."""

import asyncio

import grpc
import pytest

from service.server.guard import INTERNAL_MESSAGE, GuardInterceptor
from service.proto.kvmemo.v1 import kvmemo_pb2 as pb


async def broken(request, context):
    raise ZeroDivisionError("a bug")


async def broken_stream(request, context):
    yield pb.GenerateResponse(text="first")
    raise KeyError("a bug")


async def echo(request, context):
    return pb.TokenizeResponse(token_ids=[len(request.text)])


def handlers():
    unary = grpc.unary_unary_rpc_method_handler
    return grpc.method_handlers_generic_handler("test.Guarded", {
        "Broken": unary(broken, pb.TokenizeRequest.FromString, pb.TokenizeResponse.SerializeToString),
        "Echo": unary(echo, pb.TokenizeRequest.FromString, pb.TokenizeResponse.SerializeToString),
        "BrokenStream": grpc.unary_stream_rpc_method_handler(broken_stream, pb.TokenizeRequest.FromString,
                                                             pb.GenerateResponse.SerializeToString)})


async def calls() -> dict:
    server = grpc.aio.server(interceptors=[GuardInterceptor()])
    server.add_generic_rpc_handlers((handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    results = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            raw = dict(request_serializer=None, response_deserializer=None)
            for name, payload in (("Broken", b""), ("Echo", b"\x12\x02hi"), ("Echo", b"\x12\x02\xff\xfe")):
                try:
                    results[(name, payload)] = (grpc.StatusCode.OK, await channel.unary_unary(f"/test.Guarded/{name}", **raw)(payload))
                except grpc.aio.AioRpcError as e:
                    results[(name, payload)] = (e.code(), e.details())
            replies = []
            try:
                async for reply in channel.unary_stream("/test.Guarded/BrokenStream", **raw)(b""):
                    replies.append(reply)
            except grpc.aio.AioRpcError as e:
                results["stream"] = (e.code(), e.details(), len(replies))
    finally:
        await server.stop(None)
    return results


@pytest.fixture(scope="module")
def results():
    return asyncio.run(calls())


def test_a_servicer_bug_is_internal_naming_no_exception_class(results):
    assert results[("Broken", b"")] == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    assert results["stream"] == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, 1)


def test_a_well_formed_request_passes_and_a_malformed_one_is_invalid_argument(results):
    assert results[("Echo", b"\x12\x02hi")][0] == grpc.StatusCode.OK
    code, details = results[("Echo", b"\x12\x02\xff\xfe")]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid kvmemo.v1.TokenizeRequest message" in details
