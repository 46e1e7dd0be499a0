"""Background writes to the ConfigMap: the caller never waits, failures are counted and retried."""

import logging
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from service.publish.configmap import PUBLISH_FAILURES, ConfigMapStore

log = logging.getLogger(__name__)


@dataclass
class Publisher:
    store: ConfigMapStore
    max_backoff: float = 30.0
    max_pending: int = 64
    _jobs: queue.Queue = field(default_factory=queue.Queue)
    _stop: threading.Event = field(default_factory=threading.Event)
    _idle: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _pending: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "Publisher":
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="kvmemo-publish", daemon=True)
        self._thread.start()
        return self

    def publish_report(self, record: dict) -> None:
        self._submit("report", lambda: self.store.merge_report(record))

    def publish_oom(self, fp12: str, kv_cache_memory_bytes: int) -> None:
        self._submit("oom", lambda: self.store.record_oom(fp12, kv_cache_memory_bytes))

    def _submit(self, kind: str, write: Callable[[], object]) -> None:
        with self._lock:
            if self._pending >= self.max_pending:
                PUBLISH_FAILURES.labels(kind).inc()
                log.error("%d ConfigMap writes pending; dropping this %s", self.max_pending, kind)
                return
            self._pending += 1
            self._idle.clear()
        self._jobs.put((kind, write))

    def flush(self, timeout: float) -> bool:
        """True when everything submitted so far has been written."""
        return self._idle.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._jobs.put(None)
        if self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            job = self._jobs.get()
            if job is None:
                break
            kind, write = job
            attempt = 0
            while not self._stop.is_set():
                try:
                    write()
                    break
                except Exception as exc:  # noqa: BLE001 - apiserver away, slow or refusing: count, wait, retry
                    PUBLISH_FAILURES.labels(kind).inc()
                    delay = min(self.max_backoff, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)
                    attempt += 1
                    log.warning("writing %s to ConfigMap %s/%s failed (attempt %d): %s; retrying in %.1f s",
                                kind, self.store.namespace, self.store.name, attempt, exc, delay)
                    self._stop.wait(delay)
            with self._lock:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.set()
