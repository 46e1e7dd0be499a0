"""Host memory as a pod sees it: the cgroup limit (v2 `memory.max`, v1 `memory.limit_in_bytes`) or
MemTotal when unlimited; free as limit minus usage, or MemAvailable. Paths are parameters so that tests
can point them at fixture files."""

import ctypes
from dataclasses import dataclass
from pathlib import Path

# cgroup v1 reports "unlimited" as a huge page-rounded number rather than "max".
V1_UNLIMITED = 1 << 60


@dataclass(slots=True)
class HostMemory:
    total_bytes: int
    free_bytes: int
    source: str  # "cgroup-v2", "cgroup-v1" or "meminfo"


def read_meminfo(proc: Path = Path("/proc")) -> dict[str, int]:
    values = {}
    for line in (proc / "meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            values[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text == "max" else int(text)


def host_memory(cgroup: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc")) -> HostMemory:
    meminfo = read_meminfo(proc)
    if (cgroup / "memory.max").exists():
        limit, usage = _read_int(cgroup / "memory.max"), _read_int(cgroup / "memory.current")
        if limit is not None and usage is not None:
            return HostMemory(limit, max(0, limit - usage), "cgroup-v2")
    v1 = cgroup / "memory"
    limit, usage = _read_int(v1 / "memory.limit_in_bytes"), _read_int(v1 / "memory.usage_in_bytes")
    if limit is not None and usage is not None and limit < V1_UNLIMITED and limit < meminfo["MemTotal"]:
        return HostMemory(limit, max(0, limit - usage), "cgroup-v1")
    return HostMemory(meminfo["MemTotal"], meminfo["MemAvailable"], "meminfo")


def process_rss(proc: Path = Path("/proc")) -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in bytes."""
    status = {}
    for line in (proc / "self" / "status").read_text().splitlines():
        name, _, rest = line.partition(":")
        status[name] = rest.split()
    return int(status["VmRSS"][0]) * 1024, int(status["VmHWM"][0]) * 1024


def reset_peak_rss(proc: Path = Path("/proc")) -> None:
    """Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        (proc / "self" / "clear_refs").write_text("5")
    except OSError:
        pass  # not permitted in some sandboxes: the peak then covers the whole process life


def release_free_heap() -> None:
    """Returns the heap that freed tensors left to the OS (glibc's malloc_trim), so that RSS reads what is live:
    otherwise it counts whatever earlier steps freed and the allocator kept, by an amount that differs from run
    to run by more than the CPU's safety margin."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: RSS keeps the freed heap
