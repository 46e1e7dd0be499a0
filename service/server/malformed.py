"""Request messages that do not parse (random bytes, a truncated message, an overlong varint, bad UTF-8 in a
string field) end their call with INVALID_ARGUMENT and one rate-limited log line, on every method of every
service. grpc's Python server would answer UNKNOWN and log a traceback for each: its deserializer's exception
escapes the handler. So the interceptor gives each handler a deserializer that hands on a `Malformed` marker
instead, and a behaviour that rejects the marker before the servicer sees it.

Streaming methods listed in PASSED_ON receive the marker in their request iterator and answer it themselves
(ModelStreamInfer reports it as one failed request; the stream stays open for the others)."""

import inspect
from dataclasses import dataclass

import grpc

from service.server.rejections import REJECTIONS

PASSED_ON = {"/inference.GRPCInferenceService/ModelStreamInfer"}


@dataclass(frozen=True, slots=True)
class Malformed:
    """Stands in for a request message that did not parse."""
    type_name: str
    size: int

    @property
    def message(self) -> str:
        return f"request: {self.size} bytes that are not a valid {self.type_name} message"


def safe_deserializer(deserialize):
    message_class = getattr(deserialize, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", "protobuf")

    def parse(raw: bytes):
        try:
            return deserialize(raw)
        except Exception:  # any failure to parse is the client's malformed message
            return Malformed(type_name, len(raw))

    return parse


async def reject(context, malformed: Malformed, method: str):
    REJECTIONS.record(grpc.StatusCode.INVALID_ARGUMENT, malformed.message, method)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, malformed.message)


def checked_requests(requests, context, method: str):
    async def check():
        async for request in requests:
            if isinstance(request, Malformed) and method not in PASSED_ON:
                await reject(context, request, method)
            yield request
    return check()


def guarded(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    if handler is None or handler.request_deserializer is None:
        return handler
    kind = ("stream" if handler.request_streaming else "unary") + "_" + (
        "stream" if handler.response_streaming else "unary")
    behavior = getattr(handler, kind)
    streams_out = inspect.isasyncgenfunction(behavior)

    async def first(request, context):
        if handler.request_streaming:
            return checked_requests(request, context, method)
        if isinstance(request, Malformed):
            await reject(context, request, method)
        return request

    if streams_out:
        async def wrapped(request, context):
            async for response in behavior(await first(request, context), context):
                yield response
    else:
        async def wrapped(request, context):
            return await behavior(await first(request, context), context)

    return handler._replace(request_deserializer=safe_deserializer(handler.request_deserializer), **{kind: wrapped})


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        return guarded(await continuation(handler_call_details), handler_call_details.method)
