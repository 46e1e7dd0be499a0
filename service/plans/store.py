"""The one interface boot and the server use for plans, whatever holds them:

- lookup(fingerprint, policy) -> Lookup: a stored plan for this fingerprint, or None and why;
- record_profile(record): remember what profiling measured (or that a plan turned out stale);
- record_oom(report): an out-of-memory error while serving with the plan this boot chose;
- close(): finish pending writes.

open_plans(config) picks the implementation: the ConfigMap when one is named (and reachable credentials exist),
else the plan file, or none at all with plan_store=none."""

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service.config import EngineConfig
from service.memory.memory_profile import MemoryProfile
from service.memory.report import BootReport


@dataclass(frozen=True, slots=True)
class StoredPlan:
    source: str  # file | configmap
    kv_cache_memory_bytes: int
    free_at_start_bytes: int  # a plan applies only while at least about this much is free at start
    record: MemoryProfile | None  # the whole measurement, where the store keeps it (the file does)


@dataclass(frozen=True, slots=True)
class Lookup:
    plan: StoredPlan | None
    reason: str  # where the plan came from, or why there is none
    earlier_ooms: int = 0  # of a stale plan that profiling replaces: each doubles the next margin


class Plans(Protocol):
    def lookup(self, fingerprint: str, policy: str) -> Lookup: ...
    def record_profile(self, record: MemoryProfile) -> None: ...
    def record_oom(self, report: BootReport) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class NoPlans:
    why: str = "no plan store is configured"

    def lookup(self, fingerprint: str, policy: str) -> Lookup:
        return Lookup(None, self.why)

    def record_profile(self, record: MemoryProfile) -> None:
        pass

    def record_oom(self, report: BootReport) -> None:
        pass

    def close(self) -> None:
        pass


def open_plans(config: EngineConfig) -> Plans:
    from service.plans.file import FilePlans

    if config.plan_store == "none":
        return NoPlans("plan_store=none")
    if config.configmap_name and config.plan_store in ("auto", "configmap"):
        from service.plans.configmap import ConfigMapPlans  # the kubernetes client, only where it is used

        return ConfigMapPlans.for_config(config) or NoPlans(f"ConfigMap {config.configmap_name} is unusable")
    if config.plan_store == "configmap":
        return NoPlans("plan_store=configmap, but no ConfigMap is named (--configmap)")
    return FilePlans(Path(config.plan_dir) if config.plan_dir else None)
