"""The service's ConfigMap hooks as `kvmemo serve` uses them, with a real profiler record, the real
controller and the pod's own service-account token: profile → report → plan → the next boot reads it."""

import pytest

from service.config import EngineConfig
from service.memory.plan import Components, PlanRecord, requested_bytes, suggest
from service.publish import ConfigMapPlans
from tests.k8s.kube import wait_for
from tests.k8s.reports import GiB


class Boot:
    """The fields of service.boot.BootReport that the hooks read (importing it would load torch)."""

    def __init__(self, plan_source, record):
        self.plan_source, self.record = plan_source, record


def profiled(fingerprint: str) -> PlanRecord:
    components = Components(weights=2 * GiB, activation_peak=GiB // 2, non_torch=GiB // 8, cudagraph=0)
    total, free, safety = 16 * GiB, 15 * GiB, GiB // 8
    return PlanRecord(fingerprint=fingerprint, device="cpu", total_bytes=total, free_at_start_bytes=free,
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
    assert pod.read_plan(fp[:12]) is None  # first boot: no plan, so it profiles
    record = profiled(fp)
    pod.after_boot(Boot("profile", record))
    plan = wait_for(lambda: pod.read_plan(fp[:12]), what="the controller's plan")
    assert plan["kv_cache_memory_bytes"] == record.suggestions.fit_requested_bytes
    assert plan["free_at_start_bytes"] == record.free_at_start_bytes

    # A boot that used the plan publishes nothing; another fingerprint has no plan and profiles.
    pod.after_boot(Boot("configmap", None))
    assert pod.publisher.flush(5)
    assert pod.read_plan("cd" * 6) is None

    pod.record_oom(fp, plan["kv_cache_memory_bytes"])
    lowered = wait_for(lambda: (p := pod.read_plan(fp[:12])) and p["source"] == "oom" and p, what="OOM lowering")
    assert lowered["kv_cache_memory_bytes"] == plan["kv_cache_memory_bytes"] * 90 // 100
