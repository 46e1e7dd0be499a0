"""What `kvmemo serve` calls when it runs with a ConfigMap: a plan reader for the boot, the report after a
profiling boot, OOM records while serving. Every write goes through the background Publisher."""

import logging
from dataclasses import dataclass

from service.publish.configmap import ConfigMapStore
from service.publish.publisher import Publisher

log = logging.getLogger(__name__)


@dataclass
class ConfigMapPlans:
    store: ConfigMapStore
    publisher: Publisher

    @classmethod
    def for_config(cls, config, kubeconfig: str | None = None) -> "ConfigMapPlans | None":
        """None when the config names no ConfigMap, or when no credentials can be found (logged): the
        pod then serves on its own measurement, as it must whenever the apiserver is out of reach."""
        if not getattr(config, "configmap_name", None) or config.plan_store not in ("auto", "configmap"):
            return None
        try:
            store = ConfigMapStore.from_environment(config.configmap_name, kubeconfig)
        except Exception as exc:  # noqa: BLE001 - missing env, kubeconfig or service account
            log.warning("ConfigMap %s configured but unusable, serving without it: %s", config.configmap_name, exc)
            return None
        log.info("plans from ConfigMap %s/%s as pod %s", store.namespace, store.name, store.pod_name)
        return cls(store, Publisher(store).start())

    def read_plan(self, fp12: str) -> dict | None:
        """For build_engine(configmap_plan_reader=...): bounded by the store's request timeout."""
        return self.store.read_plan(fp12)

    def after_boot(self, report) -> None:
        """Publish the measurement of a profiling boot (a service.boot.BootReport); returns at once."""
        if report.plan_source == "profile" and report.record is not None:
            self.publisher.publish_report(report.record)

    def record_oom(self, fingerprint: str, kv_cache_memory_bytes: int) -> None:
        self.publisher.publish_oom(fingerprint[:12], kv_cache_memory_bytes)

    def close(self, timeout: float = 5.0) -> None:
        self.publisher.flush(timeout)
        self.publisher.stop()
