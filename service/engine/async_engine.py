"""Runs the engine on its own thread and streams each request's outputs to asyncio callers.

All engine state is touched by the engine thread only; callers talk to it through a command queue, and
outputs come back to each caller's event loop in one callback per step."""

import asyncio
import logging
import queue
import threading
from collections import defaultdict
from typing import AsyncIterator

from service.engine.engine import LLMEngine
from service.engine.outputs import RequestOutput
from service import faults
from service.engine.sampling_params import SamplingParams
from service.errors import InvalidRequest, quote

log = logging.getLogger(__name__)


class AsyncEngine:
    def __init__(self, engine: LLMEngine, max_consecutive_failures: int = 3):
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="kvmemo-engine", daemon=True)
        self.on_step = None  # optional callback(engine_stats, outputs), called on the engine thread
        # After this many failed steps in a row (a persistent CUDA error, say) the engine counts as broken:
        # on_broken(message) is called once, on the engine thread, and the server stops serving.
        self.max_consecutive_failures = max_consecutive_failures
        self.consecutive_failures = 0
        self.on_broken = None

    @property
    def num_requests(self) -> int:
        return len(self._streams)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Waits up to `timeout` for the current step to end; the thread is a daemon, so a step that hangs
        (a wedged GPU) does not keep the process alive."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=timeout)

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Yields the request's outputs as they are produced; raises InvalidRequest before the first one
        when a field is out of range. Leaving the loop early (cancel, deadline, break) aborts the request
        and frees its KV blocks."""
        self.engine.validate(request_id, prompt_token_ids, params)
        if request_id in self._streams:
            raise InvalidRequest("request_id", f"{quote(request_id)} is already in flight")
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), stream)
        self._send(("add", request_id, list(prompt_token_ids), params))
        finished = False
        try:
            while not finished:
                item = await stream.get()
                while not isinstance(item, Exception) and not item.finished and not stream.empty():
                    item = merge(item, stream.get_nowait())  # a slow reader gets fewer, larger messages
                if isinstance(item, Exception):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._send(("abort", request_id))

    def abort(self, request_id: str) -> None:
        self._send(("abort", request_id))

    def _send(self, command) -> None:
        self._commands.put(command)
        self._wake.set()

    # --- the engine thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            self._drain_commands()
            if not self.engine.has_unfinished():
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                faults.before_step()
                outputs = self.engine.step()
                self.consecutive_failures = 0
            except Exception as e:  # one bad step must not take the service down: fail what was running
                log.exception("engine step failed; ending the running requests with an error")
                outputs = [self._fail(rid, e) for rid in list(self.engine.sequences)]
                self._count_failure(e)
            if self.on_step is not None:
                self.on_step(self.engine.stats(), outputs)
            self._deliver(outputs)

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                _, request_id, prompt, params = command
                if request_id not in self._streams:
                    continue  # the caller left before the engine saw the request
                try:
                    self.engine.add_request(request_id, prompt, params)
                except InvalidRequest as e:
                    self._deliver([e], request_id)
            else:
                self.engine.abort(command[1])

    def _count_failure(self, error: Exception) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures == self.max_consecutive_failures and self.on_broken is not None:
            self.on_broken(f"{self.consecutive_failures} engine steps failed in a row (the last: {str(error)[:200]})")

    def _fail(self, request_id: str, error: Exception) -> RequestOutput:
        out = self.engine.abort(request_id)
        out.finish_reason, out.error = "error", f"internal error: {error}"
        return out

    def _deliver(self, items, request_id: str | None = None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
        for item in items:
            rid = request_id or item.request_id
            target = self._streams.get(rid)
            if target is not None:
                by_loop[target[0]].append((target[1], item))
        for loop, pairs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, pairs)
            except RuntimeError:
                pass  # that loop has closed


def merge(first: RequestOutput, second):
    """Two consecutive outputs of one request as one (an exception wins)."""
    if isinstance(second, Exception):
        return second
    second.new_token_ids = first.new_token_ids + second.new_token_ids
    second.new_text = first.new_text + second.new_text
    second.logprobs = first.logprobs + second.logprobs
    return second


def _put_all(pairs) -> None:
    for stream, item in pairs:
        stream.put_nowait(item)
