"""A point-in-time view of device memory: the driver's (free/total), the allocator's and NVML's on CUDA;
the cgroup's and this process's RSS on CPU."""

import functools
from dataclasses import dataclass

import torch

from service.memory.host import host_memory, process_rss, release_free_heap


@dataclass(slots=True)
class Snapshot:
    device: str
    total: int
    free: int
    reserved: int  # allocator-reserved bytes (CUDA); 0 on CPU
    allocated: int  # allocator-allocated bytes (CUDA); RSS on CPU
    nvml_used: int | None = None

    @property
    def used(self) -> int:
        return self.total - self.free

    @property
    def non_torch(self) -> int:
        """Driver-used bytes the allocator does not account for (CUDA context, cuBLAS, NCCL, modules)."""
        return self.used - self.reserved


@functools.lru_cache(maxsize=None)
def _nvml_handle(index: int):
    import pynvml

    pynvml.nvmlInit()
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _nvml_used(index: int) -> int | None:
    try:
        import pynvml

        return int(pynvml.nvmlDeviceGetMemoryInfo(_nvml_handle(index)).used)
    except Exception:  # NVML absent or not permitted: the torch view is enough
        return None


def take(device: torch.device) -> Snapshot:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        free, total = torch.cuda.mem_get_info(device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        return Snapshot(torch.cuda.get_device_name(device), total, free, torch.cuda.memory_reserved(device),
                        torch.cuda.memory_allocated(device), _nvml_used(index))
    release_free_heap()
    host = host_memory()
    rss, _ = process_rss()
    return Snapshot("cpu", host.total_bytes, host.free_bytes, 0, rss)
