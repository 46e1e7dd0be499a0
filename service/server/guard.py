"""Every handler of every service, guarded. grpc's Python server answers UNKNOWN, with the exception's class in
the status and a traceback in the log, for anything that escapes a handler; here:

- a request message that does not parse (random bytes, a truncated message, an overlong varint, bad UTF-8 in
  a string field) ends its call with INVALID_ARGUMENT and one rate-limited log line. The interceptor gives
  each handler a deserializer that hands on a `Malformed` marker instead of raising, and a behaviour that
  rejects the marker before the servicer sees it;
- an exception escaping a servicer (a bug) ends its call with INTERNAL and a message that names no Python
  class; its traceback is logged, at most LINES_PER_INTERVAL per interval.

Streaming methods listed in PASSED_ON receive the marker in their request iterator and answer it themselves
(ModelStreamInfer reports it as one failed request; the stream stays open for the others)."""

import inspect
import logging
from dataclasses import dataclass

import grpc

from service.server.rejections import REJECTIONS

log = logging.getLogger(__name__)
INTERNAL_MESSAGE = "internal error: the server failed this request; its log has the cause"

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


async def internal(context, error: Exception, method: str):
    if isinstance(error, grpc.aio.AbortError):  # context.abort: the status is already set
        raise error
    if REJECTIONS.record(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, method):  # its line passed the rate limit
        log.error("%s failed", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


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
            try:
                async for response in behavior(await first(request, context), context):
                    yield response
            except Exception as e:
                await internal(context, e, method)
    else:
        async def wrapped(request, context):
            try:
                return await behavior(await first(request, context), context)
            except Exception as e:
                await internal(context, e, method)

    return handler._replace(request_deserializer=safe_deserializer(handler.request_deserializer), **{kind: wrapped})


class GuardInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        return guarded(await continuation(handler_call_details), handler_call_details.method)
