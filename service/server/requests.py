"""One generation request through the engine: admission, limits, timing, metrics and error mapping,
shared by the kvmemo.v1 and KServe/Triton servicers."""

import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

import grpc

from service import metrics
from service.engine.outputs import RequestOutput
from service.engine.sampling_params import SamplingParams
from service.errors import InvalidRequest
from service.server.rejections import REJECTIONS
from service.engine.engine import MAX_REQUEST_ID_CHARS
from service.server.state import RequestError, ServerState


@dataclass(slots=True)
class Timing:
    start: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    last_token: float | None = None

    @property
    def ttft(self) -> float:
        return (self.first_token or self.start) - self.start

    @property
    def total(self) -> float:
        return (self.last_token or time.monotonic()) - self.start


def check_request_id(request_id: str) -> str:
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"request_id: {len(request_id)} characters; the limit is {MAX_REQUEST_ID_CHARS}")
    return request_id


def encode_prompt(state: ServerState, text: str, field_name: str = "prompt") -> list[int]:
    if not text:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{field_name}: must not be empty")
    return state.engine.tokenizer.encode(text)


async def generate(state: ServerState, prompt_ids: list[int], params: SamplingParams,
                   timing: Timing) -> AsyncIterator[RequestOutput]:
    """Yields the engine's outputs for one request. Raises RequestError for bad fields (INVALID_ARGUMENT),
    full queues (RESOURCE_EXHAUSTED), a draining server (UNAVAILABLE) and engine failures (INTERNAL).
    Leaving early (cancel, deadline) aborts the request, which frees its KV blocks."""
    state.admit()
    m = state.model_name
    reason = "abort"
    try:
        async for out in state.async_engine.generate(uuid.uuid4().hex, prompt_ids, params):
            now = time.monotonic()
            if out.new_token_ids:
                if timing.first_token is None:
                    timing.first_token = now
                    metrics.time_to_first_token_seconds.labels(m).observe(now - timing.start)
                else:
                    metrics.inter_token_latency_seconds.labels(m).observe(
                        (now - timing.last_token) / len(out.new_token_ids))
                timing.last_token = now
            if out.finished:
                reason = out.finish_reason
                if reason == "error":
                    code = (grpc.StatusCode.RESOURCE_EXHAUSTED if (out.error or "").startswith("resource exhausted")
                            else grpc.StatusCode.INTERNAL)
                    raise RequestError(code, out.error or "the engine failed this request")
                if reason == "abort":
                    raise RequestError(grpc.StatusCode.UNAVAILABLE, "the engine stopped before this request finished")
                metrics.prompt_tokens.labels(m).inc(out.num_prompt_tokens)
                metrics.e2e_request_latency_seconds.labels(m).observe(timing.total)
            yield out
    except InvalidRequest as e:
        reason = "invalid"
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    finally:
        state.release()
        if reason != "invalid":
            metrics.request_success.labels(m, reason).inc()


# grpc drops a status whose details pass its 16 KiB metadata limit, so every message is cut well below it
# (messages quote at most a short prefix of client input; this is the backstop).
MAX_ERROR_CHARS = 1024


def error_text(error: RequestError) -> str:
    return error.message if len(error.message) <= MAX_ERROR_CHARS else error.message[:MAX_ERROR_CHARS] + "…"


async def abort_with(context: grpc.aio.ServicerContext, error: RequestError):
    REJECTIONS.record(error.code, error.message)
    await context.abort(error.code, error_text(error))
