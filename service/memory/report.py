"""What one boot decided and measured. Torch-free, so that metrics and server code can read it without
loading torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.memory.memory_profile import MemoryProfile

if TYPE_CHECKING:
    from service.memory.snapshot import Snapshot


@dataclass(slots=True)
class BootReport:
    phase_seconds: dict[str, float] = field(default_factory=dict)
    load_seconds: dict[str, float] = field(default_factory=dict)  # load_weights' parts (cuda_init, read, ...)
    kernels_compiled: int | None = None  # Triton compilations during the boot (CUDA only)
    fingerprint: str = ""
    plan_source: str = ""  # flag | file | configmap | profile
    plan_reason: str = ""
    record: MemoryProfile | None = None  # measured components and suggestions, when known
    kv_cache_memory_bytes: int = 0  # what was allocated
    num_blocks: int = 0
    actual_non_kv_bytes: int = 0
    prediction_error_bytes: int | None = None  # actual - predicted non-KV, when a prediction exists
    plan_stale: bool = False
    baseline: Snapshot | None = None
