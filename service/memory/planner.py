"""Decides the KV-cache size for a boot: the flag, else a stored plan that passes its checks, else
profiling. Every decision says why, in the log."""

import logging
from dataclasses import dataclass

from service.config import EngineConfig
from service.engine.kv_layout import KVLayout
from service.errors import ConfigError
from service.memory import profiler
from service.memory.host import host_memory
from service.memory.memory_profile import KVCap, MiB, MemoryProfile, format_bytes, log_line, requested_bytes, suggest
from service.memory.snapshot import Snapshot
from service.plans.store import Lookup, StoredPlan

log = logging.getLogger(__name__)

# Chosen from the H200 soaks in bench/results/memory-h200-2026-12-01-soak.json: four 5-minute max-concurrency
# soaks at the `full` size with this margin ran with 0 OOMs. What grows beyond the profile while serving is the
# allocator's reserved memory (serving's mixed batches fragment it; memory outside the allocator grew 0-2 MiB);
# at its highest the non-KV memory exceeded the prediction by 243 MiB (Qwen3-0.6B with CUDA graphs), so this is
# the smallest power of two above it, and a plan that still runs out of memory doubles it (below). On CPU the
# allocator returns memory to the OS, and 64 MiB covers RSS jitter.
DEFAULT_SAFETY_BYTES = {"cuda": 256 * MiB, "cpu": 64 * MiB}
MAX_SAFETY_DOUBLINGS = 4


@dataclass(slots=True)
class KVDecision:
    kv_cache_memory_bytes: int
    source: str  # flag | file | configmap | profile
    record: MemoryProfile | None  # what profiling measured (profiled boots and file plans)
    reason: str


def safety_bytes(config: EngineConfig, device_type: str) -> int:
    if config.kv_cache_safety_bytes is not None:
        return config.kv_cache_safety_bytes
    return DEFAULT_SAFETY_BYTES.get(device_type, DEFAULT_SAFETY_BYTES["cuda"])


# Host memory is shared with everything else on the machine, and a zeroed cache of 90% of it takes minutes to
# allocate: on the CPU the profiled size is a ceiling and this the default (vLLM's CPU backend has one too).
CPU_KV_CACHE_BYTES = 4 << 30


def sequences_ceiling(layout: KVLayout) -> tuple[int, str]:
    """What max_num_seqs sequences of max_model_len can use, and that as the reason."""
    return layout.useful_bytes, (f"max_num_seqs={layout.max_num_seqs} sequences of max_model_len="
                                 f"{layout.max_model_len} can use no more")


def kv_ceiling(layout: KVLayout, device_type: str) -> tuple[int, str]:
    """The most KV cache a boot allocates from a plan or a profile (the flag may ask for more on CPU), and why."""
    if device_type == "cpu" and CPU_KV_CACHE_BYTES < layout.useful_bytes:
        return CPU_KV_CACHE_BYTES, "the CPU default; set --kv-cache-memory-bytes for more"
    return sequences_ceiling(layout)


def kv_allocation(decision: KVDecision, layout: KVLayout, device_type: str) -> tuple[int, str | None]:
    """The KV cache this boot allocates for `decision`, and why that is less than the decision's size (None
    when it is not): a plan or a profile is capped at kv_ceiling, the flag only at what the sequences can use."""
    ceiling, why = sequences_ceiling(layout) if decision.source == "flag" else kv_ceiling(layout, device_type)
    if decision.kv_cache_memory_bytes <= ceiling:
        return decision.kv_cache_memory_bytes, None
    return ceiling, why


def skipped_profiling_line(decision: KVDecision, kv_bytes: int, capped_because: str | None) -> str:
    """What a boot that did not profile logs: the KV cache it allocates, where its size came from, and, when
    the cap lowered it, the size the plan holds (or the flag asks for)."""
    line = f"skipped profiling: KV cache of {format_bytes(kv_bytes)} from {decision.reason}"
    if capped_because:
        stored = "the flag asks for" if decision.source == "flag" else f"the {decision.source} plan holds"
        line += f"; {stored} {format_bytes(decision.kv_cache_memory_bytes)}, capped: {capped_because}"
    return line


def kv_cap(layout: KVLayout, device_type: str) -> KVCap:
    ceiling, why = kv_ceiling(layout, device_type)
    return KVCap(ceiling, layout.max_num_seqs, layout.max_model_len, why if ceiling < layout.useful_bytes else None)


def plan_log_line(record: MemoryProfile, kv_in_use: int, runner) -> str:
    """log_line for this runner: its cap, and on CPU what the host total is (cgroup limit or MemTotal)."""
    host_total = host_memory().source if runner.device.type != "cuda" else None
    return log_line(record, kv_in_use, kv_cap(runner.layout, runner.device.type), host_total)


def check_kv_bytes(value: int, layout: KVLayout, free_after_weights: int) -> str | None:
    """What is wrong with value as a KV-cache size, or None."""
    lowest = layout.min_num_blocks * layout.bytes_per_block
    if value < lowest:
        return (f"{value} bytes is below one max_model_len={layout.max_model_len} sequence's worth of "
                f"{layout.max_blocks_per_seq} blocks plus the reserved one ({lowest} bytes)")
    if value > free_after_weights:
        return f"{value} bytes exceeds the {free_after_weights} bytes free after loading the weights"
    return None


def stored_plan_problem(plan: StoredPlan, config: EngineConfig, layout: KVLayout, baseline: Snapshot,
                        free_after_weights: int, ceiling: int) -> str | None:
    """Why a stored plan does not apply to this boot, or None when it does."""
    kv, recorded_free = plan.kv_cache_memory_bytes, plan.free_at_start_bytes
    if not isinstance(kv, int) or not isinstance(recorded_free, int):
        return f"the {plan.source} plan is malformed"
    if baseline.free < recorded_free - config.plan_free_tolerance_bytes:
        return (f"the {plan.source} plan was measured with {format_bytes(recorded_free)} free at start, now "
                f"{format_bytes(baseline.free)} (tolerance {format_bytes(config.plan_free_tolerance_bytes)})")
    problem = check_kv_bytes(min(kv, ceiling), layout, free_after_weights)
    return f"the {plan.source} plan fails its checks: {problem}" if problem else None


def decide(config: EngineConfig, runner, baseline: Snapshot, free_after_weights: int, weights: int, fp: str,
           lookup: Lookup) -> KVDecision:
    """runner: the ModelRunner, without a KV cache; its layout sizes the checks, and profiling runs through it.
    lookup: what the plan store holds for fp (service.plans), whichever store that is."""
    layout = runner.layout
    if config.kv_cache_memory_bytes is not None:
        problem = check_kv_bytes(config.kv_cache_memory_bytes, layout, free_after_weights)
        if problem:
            raise ConfigError(f"--kv-cache-memory-bytes={config.kv_cache_memory_bytes}: {problem}")
        return KVDecision(config.kv_cache_memory_bytes, "flag", None, "set by --kv-cache-memory-bytes")

    plan = lookup.plan
    ceiling, _ = kv_ceiling(layout, runner.device.type)
    why_profile = (stored_plan_problem(plan, config, layout, baseline, free_after_weights, ceiling) if plan
                   else lookup.reason)
    if why_profile is None:
        return KVDecision(plan.kv_cache_memory_bytes, plan.source, plan.record,
                          f"stored {plan.source} plan for fingerprint {fp[:12]} ({lookup.reason})")
    log.info("profiling memory: %s", why_profile)
    record = profile_record(config, runner, baseline, weights, fp, lookup.earlier_ooms)
    kv = record.suggestions.for_policy(config.kv_cache_policy)
    problem = check_kv_bytes(min(kv, ceiling), layout, free_after_weights)
    if problem:
        raise ConfigError(f"profiling suggests a {config.kv_cache_policy} KV cache of {kv} bytes, but {problem}; "
                          f"lower max_model_len or max_num_batched_tokens, or raise gpu_memory_utilization")
    return KVDecision(kv, "profile", record, why_profile)


def profile_record(config: EngineConfig, runner, baseline: Snapshot, weights: int, fp: str,
                   earlier_ooms: int = 0) -> MemoryProfile:
    """earlier_ooms: out-of-memory errors of the stale plan this one replaces. Each doubles the safety margin
    (up to MAX_SAFETY_DOUBLINGS times), so a plan that ran out of memory is not measured into the same size."""
    components, seconds = profiler.profile(runner, config, baseline, weights)
    safety = safety_bytes(config, runner.device.type) << min(earlier_ooms, MAX_SAFETY_DOUBLINGS)
    if earlier_ooms:
        log.warning("the previous plan for this fingerprint ran out of memory %d time(s): safety margin %s",
                    earlier_ooms, format_bytes(safety))
    return MemoryProfile(
        fingerprint=fp, device=baseline.device, total_bytes=baseline.total, free_at_start_bytes=baseline.free,
        gpu_memory_utilization=config.gpu_memory_utilization,
        requested_bytes=requested_bytes(config.gpu_memory_utilization, baseline.total), components=components,
        safety_bytes=safety, suggestions=suggest(baseline.total, baseline.free, config.gpu_memory_utilization,
                                                 components, safety),
        seconds=seconds, ooms=earlier_ooms,
    )
