"""The plan record: what profiling measured and the two KV-cache sizes it suggests, schema-versioned.

    requested     = ceil(gpu_memory_utilization x total)
    non_kv        = weights + activation_peak + non_torch + cudagraph
    fit_requested = requested - non_kv - safety
    full          = free_at_start - non_kv - safety
"""

import math
import time
from dataclasses import asdict, dataclass, field

import service

SCHEMA = 1
GiB = 1 << 30
MiB = 1 << 20


@dataclass(slots=True)
class Components:
    weights: int
    activation_peak: int
    non_torch: int
    cudagraph: int

    @property
    def non_kv(self) -> int:
        return self.weights + self.activation_peak + self.non_torch + self.cudagraph


@dataclass(slots=True)
class Suggestions:
    fit_requested_bytes: int
    full_bytes: int

    def for_policy(self, policy: str) -> int:
        return self.full_bytes if policy == "full" else self.fit_requested_bytes


def requested_bytes(utilization: float, total: int) -> int:
    return math.ceil(utilization * total)


def suggest(total: int, free_at_start: int, utilization: float, components: Components, safety: int) -> Suggestions:
    """fit_requested never counts memory that was not free at start: a device (or host) that other processes
    share cannot give this one its fraction of the total."""
    non_kv = components.non_kv
    return Suggestions(
        fit_requested_bytes=min(requested_bytes(utilization, total), free_at_start) - non_kv - safety,
        full_bytes=free_at_start - non_kv - safety,
    )


@dataclass(slots=True)
class MemoryProfile:
    fingerprint: str
    device: str
    total_bytes: int
    free_at_start_bytes: int
    gpu_memory_utilization: float
    requested_bytes: int
    components: Components
    safety_bytes: int
    suggestions: Suggestions
    seconds: float  # how long profiling took
    schema: int = SCHEMA
    engine_version: str = service.__version__
    created_at: float = field(default_factory=time.time)
    stale: bool = False  # set when a boot measured more non-KV memory than predicted
    ooms: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "MemoryProfile":
        """Raises ValueError for anything that is not a plan record of this schema."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError(f"not a schema-{SCHEMA} plan record")
        try:
            record = cls(**{**data, "components": Components(**data["components"]),
                            "suggestions": Suggestions(**data["suggestions"])})
        except (TypeError, KeyError) as e:
            raise ValueError(f"malformed plan record: {e}") from None
        numbers = [record.total_bytes, record.free_at_start_bytes, *asdict(record.components).values()]
        if any(not isinstance(n, int) or n < 0 for n in numbers):
            raise ValueError("plan record has negative or non-integer byte counts")
        return record


def format_bytes(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


# What the host total is on CPU (HostMemory.source): a pod is limited by its cgroup, not by the machine.
HOST_TOTALS = {"cgroup-v2": "the cgroup limit memory.max", "cgroup-v1": "the cgroup limit memory.limit_in_bytes",
               "meminfo": "MemTotal"}


@dataclass(frozen=True, slots=True)
class KVCap:
    """The most KV cache a boot allocates: what max_num_seqs sequences of max_model_len can fill
    (KVLayout.useful_bytes), or less where `reason` says why (planner.kv_ceiling)."""
    bytes: int
    max_num_seqs: int
    max_model_len: int
    reason: str | None = None


def advice(record: MemoryProfile, cap: KVCap | None, whole: str) -> str:
    """The two ready-to-paste flags, neither above what the cap lets the engine use."""
    fit, full = record.suggestions.fit_requested_bytes, record.suggestions.full_bytes
    if cap is None or max(fit, full) <= cap.bytes:
        return (f"Use --kv-cache-memory-bytes={fit} to fit the requested utilization, or "
                f"--kv-cache-memory-bytes={full} to use {whole}.")
    why = "capped: " + (cap.reason or f"max_num_seqs={cap.max_num_seqs} sequences of max_model_len="
                                      f"{cap.max_model_len} can use no more")
    if min(fit, full) >= cap.bytes:
        return (f"Use --kv-cache-memory-bytes={cap.bytes} ({why}; the requested utilization would allow {fit} "
                f"bytes, {whole} {full}).")

    def flag(value: int, purpose: str) -> str:
        if value <= cap.bytes:
            return f"--kv-cache-memory-bytes={value} {purpose}"
        return f"--kv-cache-memory-bytes={cap.bytes} {purpose} ({why}; uncapped {value})"

    return f"Use {flag(fit, 'to fit the requested utilization')}, or {flag(full, f'to use {whole}')}."


def log_line(record: MemoryProfile, kv_in_use: int, cap: KVCap | None = None, host_total: str | None = None) -> str:
    """One line a person can act on, like vLLM's. On CPU it speaks of host memory, says what its total is
    (host_total: a HostMemory.source) and has no CUDA-graph component."""
    c = record.components
    measured = (f"weights {format_bytes(c.weights)}, peak activation {format_bytes(c.activation_peak)}, "
                f"non-torch {format_bytes(c.non_torch)}")
    if record.device == "cpu":
        total = HOST_TOTALS.get(host_total, "the host's memory")
        start = (f"Free host memory at start: {format_bytes(record.free_at_start_bytes)} of "
                 f"{format_bytes(record.total_bytes)} ({total}). Requested utilization "
                 f"{record.gpu_memory_utilization} of host memory = {format_bytes(record.requested_bytes)}. "
                 f"Measured: {measured}, safety {format_bytes(record.safety_bytes)}. ")
        whole = "all free host memory"
    else:
        start = (f"Free memory on {record.device} at start: {format_bytes(record.free_at_start_bytes)} of "
                 f"{format_bytes(record.total_bytes)}. Requested utilization {record.gpu_memory_utilization} = "
                 f"{format_bytes(record.requested_bytes)}. Measured: {measured}, CUDA graphs "
                 f"{format_bytes(c.cudagraph)}, safety {format_bytes(record.safety_bytes)}. ")
        whole = "the whole device"
    return (f"{start}{advice(record, cap, whole)} KV cache in use: {format_bytes(kv_in_use)} "
            f"(fingerprint {record.fingerprint[:12]}).")
