"""Plans in the deployment's ConfigMap: the controller's plan read at boot (bounded by the request timeout),
the report after a profiling boot and OOM events while serving, each written by the background Publisher so
that a slow or absent apiserver never holds up a boot or a step."""

import logging
from dataclasses import dataclass

from service.contract.keys import plan_key
from service.memory.memory_profile import MemoryProfile
from service.memory.report import BootReport
from service.plans.store import Lookup, StoredPlan
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

    def lookup(self, fingerprint: str, policy: str) -> Lookup:
        """The controller's plan: one size, whatever the policy (the controller chose it)."""
        fp12 = fingerprint[:12]
        plan = self.store.read_plan(fp12)
        where = f"{plan_key(fp12)} in ConfigMap {self.store.name}"
        if plan is None:
            return Lookup(None, f"no {where}")
        return Lookup(StoredPlan("configmap", plan["kv_cache_memory_bytes"], plan["free_at_start_bytes"], None),
                      where)

    def record_profile(self, record: MemoryProfile) -> None:
        """Merged into this fingerprint's report for the controller; returns at once."""
        self.publisher.publish_report(record)

    def record_oom(self, report: BootReport) -> None:
        self.publisher.publish_oom(report.fingerprint[:12], report.kv_cache_memory_bytes)

    def close(self, timeout: float = 5.0) -> None:
        self.publisher.flush(timeout)
        self.publisher.stop()
