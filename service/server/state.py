"""What every servicer shares: the engine, the served model's name, the limits and admission."""

import time
from dataclasses import dataclass, field

import grpc

from service import metrics
from service.errors import quote
from service.boot import BootReport
from service.config import EngineConfig
from service.engine.async_engine import AsyncEngine
from service.engine.engine import EngineStats, LLMEngine



class RequestError(Exception):
    """Ends one RPC with a status code; the message names the field or limit, the value and the bound."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class Limits:
    max_concurrent_requests: int = 256
    max_waiting_requests: int = 256
    max_message_bytes: int = 4 << 20


@dataclass
class ServerState:
    model_name: str
    config: EngineConfig
    limits: Limits
    engine: LLMEngine | None = None  # the engine itself (steps on its own thread)
    async_engine: AsyncEngine | None = None  # the engine thread, streaming to the servicers
    report: BootReport | None = None
    ready: bool = False
    draining: bool = False
    broken: str | None = None  # why the engine no longer serves (failed steps in a row); the pod awaits a restart
    in_flight: int = 0
    last_stats: EngineStats | None = None
    _preemptions_seen: int = 0
    _ooms_seen: int = 0
    on_oom: object = None  # callable(count), on the engine thread: record that many OOMs against the plan
    started_at: float = field(default_factory=time.monotonic)

    def check_model(self, name: str) -> None:
        if name and name != self.model_name:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"model {quote(name)} is not served here; this server serves {self.model_name!r}")

    def admit(self) -> None:
        """Counts one more request in flight, or raises RequestError saying which limit stops it."""
        if self.draining:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; send the request elsewhere")
        if self.broken:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"this server stopped serving: {self.broken}; "
                               "send the request elsewhere")
        if not self.ready:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the engine is still starting; retry shortly")
        limit = self.limits.max_concurrent_requests
        if self.in_flight >= limit:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"{self.in_flight} requests in flight; the limit is max_concurrent_requests={limit}")
        running = self.last_stats.num_running if self.last_stats else 0
        waiting = max(0, self.in_flight - running)
        limit = self.limits.max_waiting_requests
        if waiting >= limit:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"{waiting} requests waiting for the engine; the limit is max_waiting_requests={limit}")
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    def on_step(self, stats: EngineStats, outputs) -> None:
        """Called on the engine thread after every step."""
        self.last_stats = stats
        m = self.model_name
        metrics.requests_running.labels(m).set(stats.num_running)
        metrics.requests_waiting.labels(m).set(stats.num_waiting)
        used = stats.num_usable_blocks - stats.num_free_blocks
        metrics.kv_cache_blocks.labels(m, "free").set(stats.num_free_blocks)
        metrics.kv_cache_blocks.labels(m, "used").set(used)
        metrics.kv_cache_blocks.labels(m, "total").set(stats.num_usable_blocks)
        metrics.kv_cache_usage_ratio.labels(m).set(used / max(1, stats.num_usable_blocks))
        if stats.num_preemptions > self._preemptions_seen:
            metrics.preemptions.labels(m).inc(stats.num_preemptions - self._preemptions_seen)
            self._preemptions_seen = stats.num_preemptions
        if stats.num_ooms > self._ooms_seen:
            new = stats.num_ooms - self._ooms_seen
            metrics.oom.labels(m).inc(new)
            self._ooms_seen = stats.num_ooms
            if self.on_oom is not None:
                self.on_oom(new)
        tokens = sum(len(o.new_token_ids) for o in outputs)
        if tokens:
            metrics.generation_tokens.labels(m).inc(tokens)
