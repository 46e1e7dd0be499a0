"""A work queue of keys as client-go's workqueue has it: a key waiting is not queued twice, and a key
added while a worker holds it is handed out once more when that worker is done. So a burst of events
for one ConfigMap costs at most the reconcile running now plus one more."""

import threading
from collections import deque


class WorkQueue:
    def __init__(self):
        self._cond = threading.Condition()
        self._queue: deque = deque()
        self._dirty: set = set()  # waiting to be processed
        self._processing: set = set()
        self._closed = False

    def add(self, key) -> None:
        with self._cond:
            if self._closed or key in self._dirty:
                return
            self._dirty.add(key)
            if key not in self._processing:
                self._queue.append(key)
                self._cond.notify()

    def get(self, timeout: float | None = None):
        """The next key, or None after `timeout` seconds or once the queue is closed. Call done(key) after."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._queue or self._closed, timeout) or not self._queue:
                return None
            key = self._queue.popleft()
            self._dirty.discard(key)
            self._processing.add(key)
            return key

    def done(self, key) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)
