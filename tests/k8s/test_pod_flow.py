"""The ConfigMap plans as `kvmemo serve` uses them, with a real profiler record, the real
controller and the pod's own service-account token: profile → report → plan → the next boot reads it."""

import pytest

from service.config import EngineConfig
from service.memory.memory_profile import Components, MemoryProfile, requested_bytes, suggest
from service.memory.report import BootReport
from service.plans.configmap import ConfigMapPlans
from tests.k8s.kube import wait_for
from tests.k8s.reports import GiB


def profiled(fingerprint: str) -> MemoryProfile:
    components = Components(weights=2 * GiB, activation_peak=GiB // 2, non_torch=GiB // 8, cudagraph=0)
    total, free, safety = 16 * GiB, 15 * GiB, GiB // 8
    return MemoryProfile(fingerprint=fingerprint, device="cpu", total_bytes=total, free_at_start_bytes=free,
                      gpu_memory_utilization=0.9, requested_bytes=requested_bytes(0.9, total),
                      components=components, safety_bytes=safety,
                      suggestions=suggest(total, free, 0.9, components, safety), seconds=1.0)


@pytest.fixture
def pod(pod_env):
    plans = ConfigMapPlans.for_config(EngineConfig(configmap_name="kvmemo"))
    yield plans
    plans.close()


def test_no_configmap_configured_means_no_hooks():
    assert ConfigMapPlans.for_config(EngineConfig()) is None
    assert ConfigMapPlans.for_config(EngineConfig(configmap_name="kvmemo", plan_store="file")) is None


def test_profile_report_plan_then_next_boot_reads_it(pod, controllers):
    controllers.start()
    fp = "ab" * 32
    first = pod.lookup(fp, "fit-requested")
    assert first.plan is None and first.reason == f"no kv-cache-plan.{fp[:12]} in ConfigMap kvmemo"  # it profiles
    record = profiled(fp)
    pod.record_profile(record)
    plan = wait_for(lambda: pod.lookup(fp, "fit-requested").plan, what="the controller's plan")
    assert plan.source == "configmap" and plan.record is None
    assert plan.kv_cache_memory_bytes == record.suggestions.fit_requested_bytes
    assert plan.free_at_start_bytes == record.free_at_start_bytes
    assert pod.publisher.flush(5)
    assert pod.lookup("cd" * 32, "fit-requested").plan is None  # another fingerprint has no plan and profiles

    pod.record_oom(BootReport(fingerprint=fp, kv_cache_memory_bytes=plan.kv_cache_memory_bytes))
    lowered = wait_for(lambda: (p := pod.store.read_plan(fp[:12])) and p["source"] == "oom" and p, what="OOM lowering")
    assert lowered["kv_cache_memory_bytes"] == plan.kv_cache_memory_bytes * 90 // 100
