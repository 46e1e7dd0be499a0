"""The thin, impure part: reconcile an observed ConfigMap, write the patch, post Events, count."""

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from kubernetes import client
from kubernetes.client.rest import ApiException

from controller import metrics
from controller.reconcile import Event, Settings, reconcile

log = logging.getLogger(__name__)
COMPONENT = "kvmemo-controller"
MAX_CONFLICT_RETRIES = 5
MAX_EVENT_MESSAGE = 1000
# Fault injection for the tests: die after reading and before writing, as a SIGKILL would.
FAILPOINT_ENV = "KVMEMO_FAILPOINT"


@dataclass
class Reconciler:
    core: client.CoreV1Api
    settings: Settings
    identity: str
    is_leader: Callable[[], bool]
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    _warned: set = field(default_factory=set)
    _plan_labels: dict = field(default_factory=dict)  # ConfigMap name -> fingerprints with a plan gauge
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, configmap: dict) -> None:
        with self._lock:
            for _ in range(MAX_CONFLICT_RETRIES):
                if not self.is_leader():
                    return
                try:
                    outcome = self._reconcile_once(configmap)
                except Exception as exc:  # noqa: BLE001 - counted and logged; the next event or resync retries
                    metrics.RECONCILE.labels("error").inc()
                    log.warning("reconcile of ConfigMap %s failed: %s", _name(configmap), exc)
                    return
                metrics.RECONCILE.labels(outcome).inc()
                if outcome != "conflict":
                    return
                configmap = self._read(configmap)

    def _read(self, configmap: dict) -> dict:
        fresh = self.core.read_namespaced_config_map(_name(configmap), _namespace(configmap), _request_timeout=10)
        return self.core.api_client.sanitize_for_serialization(fresh)

    def _reconcile_once(self, configmap: dict) -> str:
        result = reconcile(configmap, self.settings, self.clock())
        for rejection in result.rejections:
            fingerprint = (_name(configmap), rejection.key, hashlib.sha256(rejection.raw.encode()).hexdigest())
            if fingerprint in self._warned:
                continue  # one Warning per distinct bad value, not one per resync
            self._warned.add(fingerprint)
            metrics.REJECTED.labels(rejection.reason).inc()
            log.warning("rejected %s in ConfigMap %s: %s", rejection.key, _name(configmap), rejection.message)
            self._event(configmap, Event("Warning", "ReportRejected", rejection.message))
        if result.patch is None:
            self._export_plans(configmap, result.plans)
            return "unchanged"
        if os.environ.get(FAILPOINT_ENV) == "controller-before-write":
            log.error("failpoint %s: exiting between read and write", FAILPOINT_ENV)
            os._exit(3)
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
