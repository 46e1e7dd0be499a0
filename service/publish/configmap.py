"""The pod's side of the ConfigMap contract: read its plan, merge its report, record OOMs.

Namespace and pod name come from the downward API (POD_NAMESPACE, POD_NAME); credentials from the
in-cluster service account, else KUBECONFIG. Each call is synchronous; `Publisher` runs the writes in
the background so that a slow or absent apiserver never holds up serving.
"""

import json
import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter

from service.contract.client import load_api_client
from service.contract.keys import check_fp12, oom_key, plan_key, report_key
from service.contract.ownership import CONTROLLER_MANAGER, owned_by
from service.contract.merge import merge_oom, merge_reports, new_report
from service.contract.records import Rejected, parse_plan

log = logging.getLogger(__name__)
PUBLISH_FAILURES = Counter("kvmemo_publish_failures_total",
                           "Failed ConfigMap requests: kind report or oom (retried in the background), "
                           "read_plan (the pod profiles instead)", ["kind"])
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class PublishError(RuntimeError):
    pass


@dataclass
class ConfigMapStore:
    name: str
    namespace: str
    pod_name: str
    api: object  # kubernetes.client.ApiClient
    request_timeout: float = 5.0
    max_conflict_retries: int = 10
    conflicts: int = 0  # 409s seen, for tests and benchmarks

    @classmethod
    def from_environment(cls, name: str, kubeconfig: str | None = None, **kwargs) -> "ConfigMapStore":
        namespace = os.environ.get("POD_NAMESPACE")
        if not namespace and SA_NAMESPACE_FILE.exists():
            namespace = SA_NAMESPACE_FILE.read_text().strip()
        if not namespace:
            raise PublishError("POD_NAMESPACE is not set and no service-account namespace file exists: "
                               "set it from the downward API (fieldRef metadata.namespace)")
        pod = os.environ.get("POD_NAME") or socket.gethostname()
        return cls(name, namespace, pod, load_api_client(kubeconfig), **kwargs)

    def _core(self):
        from kubernetes import client

        return client.CoreV1Api(self.api)

    def _get(self) -> dict:
        obj = self._core().read_namespaced_config_map(self.name, self.namespace,
                                                      _request_timeout=self.request_timeout)
        return self.api.sanitize_for_serialization(obj)

    def read_plan(self, fp12: str) -> dict | None:
        """The plan for this fingerprint, or None (and a log line saying why) when there is none usable."""
        key = plan_key(check_fp12(fp12))
        try:
            configmap = self._get()
            raw = (configmap.get("data") or {}).get(key)
        except Exception as exc:  # noqa: BLE001 - no plan is a normal outcome: the pod profiles
            PUBLISH_FAILURES.labels("read_plan").inc()
            log.warning("could not read ConfigMap %s/%s for %s: %s", self.namespace, self.name, key, exc)
            return None
        if raw is None:
            log.info("ConfigMap %s/%s has no %s", self.namespace, self.name, key)
            return None
        if not owned_by(configmap, CONTROLLER_MANAGER, "data", key):
            log.warning("%s in ConfigMap %s/%s was not written by the controller (its managedFields name no %s "
                        "for it); ignoring it", key, self.namespace, self.name, CONTROLLER_MANAGER)
            return None
        try:
            return parse_plan(fp12, raw).to_dict()
        except Rejected as exc:
            log.warning("%s in ConfigMap %s/%s is unusable (%s); ignoring it", key, self.namespace, self.name, exc)
            return None

    def merge_report(self, record) -> dict:
        """Merge a profiler record (service.memory's MemoryProfile or its to_json() dict) into the report;
        returns what was written."""
        report = new_report(record.to_json() if hasattr(record, "to_json") else record, self.pod_name)
        fp12 = check_fp12(report["fingerprint"][:12])
        return self._update_annotation(report_key(fp12), lambda raw: merge_reports(raw, report))

    def record_oom(self, fp12: str, kv_cache_memory_bytes: int) -> dict:
        if not isinstance(kv_cache_memory_bytes, int) or kv_cache_memory_bytes <= 0:
            raise ValueError(f"kv_cache_memory_bytes {kv_cache_memory_bytes!r} must be a positive integer")
        return self._update_annotation(oom_key(check_fp12(fp12)),
                                       lambda raw: merge_oom(raw, kv_cache_memory_bytes))

    def _update_annotation(self, key: str, merge) -> dict:
        """Read, merge, write with the read's resourceVersion; a 409 means another pod wrote first: again."""
        from kubernetes.client.rest import ApiException

        for attempt in range(self.max_conflict_retries):
            current = self._get()
            meta = current["metadata"]
            value = merge((meta.get("annotations") or {}).get(key))
            patch = {"metadata": {"resourceVersion": meta["resourceVersion"],
                                  "annotations": {key: json.dumps(value, separators=(",", ":"))}}}
            try:
                self._core().patch_namespaced_config_map(
                    self.name, self.namespace, patch, _content_type="application/merge-patch+json",
                    _request_timeout=self.request_timeout)
                return value
            except ApiException as exc:
                if exc.status != 409:
                    raise
                self.conflicts += 1
            time.sleep(min(1.0, 0.01 * 2 ** attempt) * random.uniform(0.5, 1.5))
        raise PublishError(f"{key} in ConfigMap {self.namespace}/{self.name}: still conflicting after "
                           f"{self.max_conflict_retries} attempts")
