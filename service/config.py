"""The one engine configuration, validated once and passed whole."""

import os
from dataclasses import dataclass
from pathlib import Path

from service.contract.keys import POLICIES
from service.errors import ConfigError


def cache_root() -> Path:
    """Where kvmemo keeps what outlives a process (plans, compiled kernels): $XDG_CACHE_HOME/kvmemo, else
    ~/.cache/kvmemo."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kvmemo"


def default_capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then steps of 16 up to max_num_seqs (which is always included)."""
    sizes = [s for s in (1, 2, 4, 8) if s <= max_num_seqs]
    sizes += list(range(16, max_num_seqs + 1, 16))
    if max_num_seqs not in sizes:
        sizes.append(max_num_seqs)
    return sorted(set(sizes))


@dataclass(slots=True)
class EngineConfig:
    model: str = "smollm2-135m-instruct"  # a preset name, a GGUF file or a Hugging Face model directory
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    weights_seed: int = 0  # seeds random preset weights (sampling seeds are per request)
    max_model_len: int | None = None  # None: the model's own limit
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    kv_cache_memory_bytes: int | None = None  # None: the memory profiler decides
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    cuda_graph_sizes: list[int] | None = None  # None: default_capture_sizes(max_num_seqs)
    # Triton kernels for residual add + RMSNorm, rotary + KV-cache write and SiLU x mul (service/kernels/); CUDA
    # only: on the CPU the PyTorch code runs whatever this says.
    fused_kernels: bool = True  # CUDA only: the CPU runs the PyTorch code
    async_scheduling: bool = True
    # Memory planning (service/boot.py, service/memory/).
    kv_cache_policy: str = "fit-requested"  # which profiled suggestion to use: fit-requested | full
    kv_cache_safety_bytes: int | None = None  # None: DEFAULT_SAFETY_BYTES for the device type
    plan_store: str = "auto"  # auto (configmap when configmap_name is set, else file) | file | configmap | none
    plan_dir: str | None = None  # file store directory; None: ~/.cache/kvmemo/plans
    plan_free_tolerance_bytes: int = 512 << 20  # a stored plan applies while free-at-start >= recorded - this
    configmap_name: str | None = None
    # Compiled Triton kernels; None: $TRITON_CACHE_DIR when set, else <cache root>/kernels (service/kernels/cache.py).
    kernel_cache_dir: str | None = None

    def __post_init__(self):
        if self.max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ConfigError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.block_size not in (8, 16, 32, 64, 128):
            raise ConfigError(f"block_size must be one of 8, 16, 32, 64, 128, got {self.block_size}")
        if not (0.0 < self.gpu_memory_utilization <= 1.0):
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            raise ConfigError(f"kv_cache_memory_bytes must be a positive integer, got {self.kv_cache_memory_bytes}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ConfigError(f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype}")
        if self.kv_cache_policy not in POLICIES:
            raise ConfigError(f"kv_cache_policy must be fit-requested or full, got {self.kv_cache_policy!r}")
        if self.plan_store not in ("auto", "file", "configmap", "none"):
            raise ConfigError(f"plan_store must be auto, file, configmap or none, got {self.plan_store!r}")
        if self.kv_cache_safety_bytes is not None and self.kv_cache_safety_bytes < 0:
            raise ConfigError(f"kv_cache_safety_bytes must be >= 0, got {self.kv_cache_safety_bytes}")
        if self.cuda_graph_sizes is None:
            self.cuda_graph_sizes = default_capture_sizes(self.max_num_seqs)
        else:
            bad = [s for s in self.cuda_graph_sizes if not (1 <= s <= self.max_num_seqs)]
            if bad:
                raise ConfigError(f"cuda_graph_sizes must lie in [1, max_num_seqs={self.max_num_seqs}], got {bad}")
            self.cuda_graph_sizes = sorted(set(self.cuda_graph_sizes))
