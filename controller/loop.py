"""The thin, impure part: the watch enqueues ConfigMaps, one worker reconciles the newest copy of each,
writes the patch, posts Events and counts."""

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from kubernetes import client
from kubernetes.client.rest import ApiException

from controller import faults, metrics
from controller.events import COMPONENT, EventRecorder
from controller.memo import RejectionMemo
from controller.reconcile import Event, Rejection, Settings, reconcile
from controller.workqueue import WorkQueue

log = logging.getLogger(__name__)
MAX_CONFLICT_RETRIES = 5


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
    event_interval: float = 60.0
    memo: RejectionMemo = field(default_factory=RejectionMemo)
    recorder: EventRecorder | None = None
    _plan_labels: dict = field(default_factory=dict)  # ConfigMap name -> fingerprints with a plan gauge
    beat: Callable[[], None] = lambda: None  # once per round of the worker (controller/liveness.py)

    def __post_init__(self):
        self.recorder = self.recorder or EventRecorder(self.core, self.identity, self.event_interval, self.clock)

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
            self.recorder.flush()
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
        with metrics.RECONCILE_SECONDS.time():
            result = reconcile(configmap, self.settings, self.clock(), self.memo)
        self._warn(configmap, [r for r in result.rejections if r.first_seen])
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

    def _warn(self, configmap: dict, fresh: list[Rejection]) -> None:
        """Each newly seen bad value: counted, and one Warning through the recorder; one log line for all."""
        if not fresh:
            return
        for rejection in fresh:
            metrics.REJECTED.labels(rejection.reason).inc()
            self.recorder.record(configmap, Event("Warning", "ReportRejected", rejection.message))
        reasons = Counter(r.reason for r in fresh)
        log.warning("rejected %d new value(s) in ConfigMap %s (%s); the first, %s: %s", len(fresh), _name(configmap),
                    ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items())), fresh[0].key,
                    fresh[0].message[:300])

    def _event(self, configmap: dict, event: Event) -> None:
        self.recorder.record(configmap, event)


def _name(configmap: dict) -> str:
    return configmap["metadata"]["name"]


def _namespace(configmap: dict) -> str:
    return configmap["metadata"]["namespace"]
