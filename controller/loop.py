"""The thin, impure part: the watch enqueues ConfigMaps, one worker reconciles the newest copy of each,
writes the patch, posts Events and counts."""

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from kubernetes import client
from kubernetes.client.rest import ApiException

from controller import faults, metrics
from controller.reconcile import Event, Settings, reconcile
from controller.workqueue import WorkQueue

log = logging.getLogger(__name__)
COMPONENT = "kvmemo-controller"
MAX_CONFLICT_RETRIES = 5
MAX_EVENT_MESSAGE = 1000
# One Warning per distinct bad value, not one per resync; 4096 remembered values are a few hundred KiB.
MAX_WARNED = 4096


class RecentSet:
    """A set that forgets its least recently seen members beyond `limit`."""

    def __init__(self, limit: int):
        self.limit = limit
        self._items: OrderedDict = OrderedDict()

    def add(self, item) -> bool:
        """True when `item` was not in the set."""
        if item in self._items:
            self._items.move_to_end(item)
            return False
        self._items[item] = None
        if len(self._items) > self.limit:
            self._items.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class Reconciler:
    core: client.CoreV1Api
    settings: Settings
    identity: str
    is_leader: Callable[[], bool]
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    queue: WorkQueue = field(default_factory=WorkQueue)
    _latest: dict = field(default_factory=dict)  # (namespace, name) -> the newest copy the watch delivered
    _latest_lock: threading.Lock = field(default_factory=threading.Lock)
    _warned: RecentSet = field(default_factory=lambda: RecentSet(MAX_WARNED))
    _plan_labels: dict = field(default_factory=dict)  # ConfigMap name -> fingerprints with a plan gauge
    beat: Callable[[], None] = lambda: None  # once per round of the worker (controller/liveness.py)

    def enqueue(self, configmap: dict) -> None:
        """The watch's handler: keeps the newest copy and queues its key, so the watch never waits on the
        apiserver, and N events while a reconcile runs become one more reconcile."""
        key = (_namespace(configmap), _name(configmap))
        with self._latest_lock:
            self._latest[key] = configmap
        self.queue.add(key)

    def run(self, stop: threading.Event) -> None:
        """The one worker: until stop is set, reconcile the newest copy of each queued ConfigMap."""
        while not stop.is_set():
            self.beat()
            key = self.queue.get(timeout=0.5)
            if key is None:
                continue
            try:
                with self._latest_lock:
                    configmap = self._latest[key]
                self.handle(configmap)
            finally:
                self.queue.done(key)

    def handle(self, configmap: dict) -> None:
        for attempt in range(MAX_CONFLICT_RETRIES):
            if not self.is_leader():
                return
            try:
                if attempt:  # the 409 said our copy was stale
                    configmap = self._read(configmap)
                outcome = self._reconcile_once(configmap)
            except Exception as exc:  # noqa: BLE001 - counted and logged; the next event or resync retries
                metrics.RECONCILE.labels("error").inc()
                log.warning("reconcile of ConfigMap %s failed: %s", _name(configmap), exc)
                return
            metrics.RECONCILE.labels(outcome).inc()
            if outcome != "conflict":
                return

    def _read(self, configmap: dict) -> dict:
        fresh = self.core.read_namespaced_config_map(_name(configmap), _namespace(configmap), _request_timeout=10)
        return self.core.api_client.sanitize_for_serialization(fresh)

    def _reconcile_once(self, configmap: dict) -> str:
        result = reconcile(configmap, self.settings, self.clock())
        for rejection in result.rejections:
            value = (_name(configmap), rejection.key, hashlib.sha256(rejection.raw.encode()).hexdigest())
            if not self._warned.add(value):
                continue
            metrics.REJECTED.labels(rejection.reason).inc()
            log.warning("rejected %s in ConfigMap %s: %s", rejection.key, _name(configmap), rejection.message)
            self._event(configmap, Event("Warning", "ReportRejected", rejection.message))
        if result.patch is None:
            self._export_plans(configmap, result.plans)
            return "unchanged"
        faults.point(faults.BEFORE_WRITE)
        try:
            self.core.patch_namespaced_config_map(
                _name(configmap), _namespace(configmap), result.patch, field_manager=COMPONENT,
                _content_type="application/merge-patch+json", _request_timeout=10)
        except ApiException as exc:
            if exc.status == 409:
                return "conflict"
            raise
        log.info("patched ConfigMap %s: %s", _name(configmap), json.dumps(result.patch)[:500])
        self._export_plans(configmap, result.plans)
        for event in result.events:
            self._event(configmap, event)
        return "written"

    def _export_plans(self, configmap: dict, plans: dict[str, int]) -> None:
        for fp12 in self._plan_labels.get(_name(configmap), set()) - set(plans):
            metrics.PLAN_BYTES.remove(fp12)
        for fp12, kv_bytes in plans.items():
            metrics.PLAN_BYTES.labels(fp12).set(kv_bytes)
        self._plan_labels[_name(configmap)] = set(plans)

    def _event(self, configmap: dict, event: Event) -> None:
        meta = configmap["metadata"]
        now = self.clock()
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}."),
            involved_object=client.V1ObjectReference(
                api_version="v1", kind="ConfigMap", name=meta["name"], namespace=meta["namespace"],
                uid=meta.get("uid"), resource_version=meta.get("resourceVersion")),
            type=event.type, reason=event.reason, message=event.message[:MAX_EVENT_MESSAGE],
            source=client.V1EventSource(component=COMPONENT), reporting_component=COMPONENT,
            reporting_instance=self.identity, first_timestamp=now, last_timestamp=now, count=1)
        try:
            self.core.create_namespaced_event(meta["namespace"], body, _request_timeout=10)
        except Exception as exc:  # noqa: BLE001 - an Event is a courtesy; the reconcile already happened
            log.warning("could not post %s Event %s: %s", event.type, event.reason, exc)


def _name(configmap: dict) -> str:
    return configmap["metadata"]["name"]


def _namespace(configmap: dict) -> str:
    return configmap["metadata"]["namespace"]
