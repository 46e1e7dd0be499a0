"""List, then watch from the list's resourceVersion; bookmarks keep that version fresh, 410 Gone relists,
other errors back off with jitter. Objects reach `handle` as plain JSON dicts."""

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    initial: float = 0.2
    maximum: float = 30.0
    attempt: int = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * 2 ** self.attempt)
        self.attempt += 1
        return delay * random.uniform(0.5, 1.0)  # full-ish jitter: many controllers must not retry in step

    def reset(self) -> None:
        self.attempt = 0


class Gone(Exception):
    """The watch's resourceVersion is older than the apiserver's history: list again."""


@dataclass
class ConfigMapWatcher:
    core: client.CoreV1Api
    namespace: str
    label_selector: str
    handle: Callable[[dict], None]
    resync_seconds: float = 300.0
    synced: threading.Event = None
    beat: Callable[[], None] = lambda: None  # on every line and every round (controller/liveness.py)

    def __post_init__(self):
        self.synced = self.synced or threading.Event()
        self._listed_at = 0.0

    def _watch_seconds(self) -> int:
        return max(1, int(min(60.0, self.resync_seconds)))

    def list(self) -> str:
        resp = self.core.list_namespaced_config_map(
            self.namespace, label_selector=self.label_selector, _preload_content=False, _request_timeout=30)
        body = _json_or_raise(resp)
        for item in body.get("items") or []:
            self.handle(item)
        self.synced.set()
        self._listed_at = time.monotonic()
        return body["metadata"]["resourceVersion"]

    def watch(self, resource_version: str, keep_going: Callable[[], bool]) -> str:
        """Returns the last resourceVersion seen when the server ends the watch or keep_going() is False."""
        resp = self.core.list_namespaced_config_map(
            self.namespace, label_selector=self.label_selector, watch=True, allow_watch_bookmarks=True,
            resource_version=resource_version, timeout_seconds=self._watch_seconds(),
            _preload_content=False, _request_timeout=(10, self._watch_seconds() + 30))
        try:
            if resp.status != 200:
                _json_or_raise(resp)
            for line in iter_resp_lines(resp):
                self.beat()
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message"))
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
                if event.get("type") in ("ADDED", "MODIFIED"):
                    self.handle(obj)
                if not keep_going():
                    break
        finally:
            resp.close()  # a half-read stream must not go back to the pool
            resp.release_conn()
        return resource_version

    def run(self, keep_going: Callable[[], bool], stop: threading.Event) -> None:
        """Until stop is set or keep_going() turns False (leadership lost)."""
        backoff = Backoff()
        resource_version = None
        while not stop.is_set() and keep_going():
            self.beat()
            try:
                if resource_version is None:
                    resource_version = self.list()
                resource_version = self.watch(resource_version, keep_going)
                backoff.reset()
                if time.monotonic() - self._listed_at >= self.resync_seconds:
                    resource_version = None
            except Gone as exc:
                log.info("watch expired (%s); listing again", exc)
                resource_version = None
            except Exception as exc:  # noqa: BLE001 - any apiserver or network failure: back off and relist
                delay = backoff.next_delay()
                log.warning("list/watch of ConfigMaps in %s failed: %s; retrying in %.1f s",
                            self.namespace, exc, delay)
                resource_version = None
                stop.wait(delay)


def _json_or_raise(resp) -> dict:
    data = resp.data if resp.data is not None else resp.read()
    if not 200 <= resp.status < 300:
        if resp.status == 410:
            raise Gone(data[:200])
        raise ApiException(status=resp.status, reason=data[:500].decode(errors="replace"))
    return json.loads(data)
