"""Events, aggregated as client-go's event correlator does: per ConfigMap, type and reason, the first
Event is posted at once; later ones only count, and at most once per `interval` the same Event object is
patched with the count, the last timestamp and the latest message. A flood of bad reports therefore
costs one apiserver write per reason per interval, and the worker never waits on thousands of POSTs."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from kubernetes import client
from kubernetes.client.rest import ApiException

from controller.reconcile import Event
from service.contract.ownership import CONTROLLER_MANAGER

log = logging.getLogger(__name__)
COMPONENT = CONTROLLER_MANAGER  # the Events' source and the field manager of every write
MAX_EVENT_MESSAGE = 1000
# A series not seen for this many intervals is forgotten; a later Event of its kind starts a new one.
IDLE_INTERVALS = 10


@dataclass
class _Series:
    configmap: dict  # the involved object's metadata, as last seen
    event: Event  # the latest occurrence
    name: str | None  # the Event object written for this series, once it exists
    count: int  # occurrences the Event object says
    pending: int  # occurrences since it was written
    written_at: float  # monotonic


class EventRecorder:
    def __init__(self, core: client.CoreV1Api, identity: str, interval: float = 60.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 monotonic: Callable[[], float] = time.monotonic):
        self.core, self.identity, self.interval = core, identity, interval
        self.clock, self.monotonic = clock, monotonic
        self._series: dict[tuple, _Series] = {}
        self.writes = 0  # Events created or patched, for tests and benchmarks

    def record(self, configmap: dict, event: Event) -> None:
        meta = configmap["metadata"]
        key = (meta["namespace"], meta["name"], event.type, event.reason)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(meta, event, None, 0, 1, self.monotonic())
            self._write(series)
            return
        series.configmap, series.event = meta, event
        series.pending += 1
        self._write_if_due(series)

    def flush(self) -> None:
        """Writes the counts whose interval has passed and forgets idle series; the worker calls it often."""
        now = self.monotonic()
        for key, series in list(self._series.items()):
            self._write_if_due(series)
            if not series.pending and now - series.written_at > IDLE_INTERVALS * self.interval:
                del self._series[key]

    def _write_if_due(self, series: _Series) -> None:
        if series.pending and self.monotonic() - series.written_at >= self.interval:
            self._write(series)

    def _write(self, series: _Series) -> None:
        now = self.clock()
        count = series.count + series.pending
        message = series.event.message[:MAX_EVENT_MESSAGE]
        if count > 1:
            message = f"{message} ({count} like it since the first)"[:MAX_EVENT_MESSAGE]
        series.written_at = self.monotonic()
        self.writes += 1
        try:
            if series.name is not None:
                try:
                    self.core.patch_namespaced_event(series.name, series.configmap["namespace"], {
                        "count": count, "message": message, "lastTimestamp": now.isoformat()},
                        _content_type="application/merge-patch+json", _request_timeout=10)
                    series.count, series.pending = count, 0
                    return
                except ApiException as exc:
                    if exc.status != 404:  # 404: the apiserver's event TTL removed it: a new one
                        raise
            series.name = self._create(series, message, count, now)
            series.count, series.pending = count, 0
        except Exception as exc:  # noqa: BLE001 - an Event is a courtesy; the reconcile already happened
            log.warning("could not post %s Event %s: %s", series.event.type, series.event.reason, exc)

    def _create(self, series: _Series, message: str, count: int, now: datetime) -> str:
        meta = series.configmap
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}."),
            involved_object=client.V1ObjectReference(
                api_version="v1", kind="ConfigMap", name=meta["name"], namespace=meta["namespace"],
                uid=meta.get("uid"), resource_version=meta.get("resourceVersion")),
            type=series.event.type, reason=series.event.reason, message=message,
            source=client.V1EventSource(component=COMPONENT), reporting_component=COMPONENT,
            reporting_instance=self.identity, first_timestamp=now, last_timestamp=now, count=count)
        return self.core.create_namespaced_event(meta["namespace"], body, _request_timeout=10).metadata.name
