"""Every request the server rejects leaves one INFO line with its reason (method, status code, the message's
first MESSAGE_CHARS characters), at most `limit` lines per `interval` seconds: a flood of bad requests gives
those lines and then one summary, "… N more rejected requests in the last M s", not a flooded log.

Requests that gRPC itself refuses before a handler runs (a message over max_message_bytes) are not seen here."""

import asyncio
import contextvars
import logging
import threading
import time

import grpc

from service.cli_text import escape_controls

log = logging.getLogger("kvmemo.server.rejected")
MESSAGE_CHARS = 200
LINES_PER_INTERVAL = 10
INTERVAL_S = 10.0

# The RPC being served, e.g. /kvmemo.v1.KvmemoService/Complete; set by MethodInterceptor for each call (tasks
# a handler starts, such as each request of a KServe stream, inherit it).
current_method: contextvars.ContextVar[str] = contextvars.ContextVar("kvmemo_rpc_method", default="unknown method")


class MethodInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        current_method.set(handler_call_details.method)
        return await continuation(handler_call_details)


class RateLimiter:
    """At most `limit` events per window of `interval` seconds pass; the rest are counted. The clock is a
    parameter so that tests need no sleeping."""

    def __init__(self, limit: int = LINES_PER_INTERVAL, interval: float = INTERVAL_S, clock=time.monotonic):
        self.limit, self.interval, self.clock = limit, interval, clock
        self.window_start: float | None = None
        self.passed = 0
        self.suppressed = 0

    def allow(self) -> bool:
        if self.window_start is None or self.clock() - self.window_start >= self.interval:
            self.close_window()
            self.window_start = self.clock()
        if self.passed < self.limit:
            self.passed += 1
            return True
        self.suppressed += 1
        return False

    def close_window(self) -> tuple[int, float]:
        """Ends the current window: (events it suppressed, seconds it lasted)."""
        suppressed = self.suppressed
        seconds = 0.0 if self.window_start is None else self.clock() - self.window_start
        self.window_start, self.passed, self.suppressed = None, 0, 0
        if suppressed:
            log.info("… %d more rejected requests in the last %.0f s (at most %d lines per %.0f s)", suppressed,
                     seconds, self.limit, self.interval)
        return suppressed, seconds


class RejectionLog:
    def __init__(self, limiter: RateLimiter | None = None):
        self.limiter = limiter or RateLimiter()
        self.lock = threading.Lock()
        self.flush_scheduled = False

    def record(self, code: grpc.StatusCode, message: str, method: str | None = None) -> bool:
        """Logs the rejection unless the rate limit holds it back; returns whether it was logged."""
        with self.lock:
            allowed = self.limiter.allow()
            if not allowed and not self.flush_scheduled:
                self.flush_scheduled = self._schedule_flush()
        if allowed:
            text = escape_controls(message[:MESSAGE_CHARS]).replace("\n", "\\n")
            more = "…" if len(message) > MESSAGE_CHARS else ""
            level = logging.WARNING if code == grpc.StatusCode.INTERNAL else logging.INFO
            log.log(level, "rejected %s: %s: %s%s", method or current_method.get(), code.name, text, more)
        return allowed

    def _schedule_flush(self) -> bool:
        """The summary is written when the window ends, also when no further rejection comes to trigger it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False  # outside the server's loop: the next window's first rejection writes it
        window_end = self.limiter.window_start + self.limiter.interval
        loop.call_later(max(0.0, window_end - self.limiter.clock()), self.flush)
        return True

    def flush(self) -> None:
        with self.lock:
            self.flush_scheduled = False
            self.limiter.close_window()


REJECTIONS = RejectionLog()
