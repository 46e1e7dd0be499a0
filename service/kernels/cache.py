"""Where Triton keeps the kernels it compiles, so that a restarted process loads them instead of compiling
again (a restarted container finds its pod's emptyDir; a new pod, a volume the Deployment shares), and how
many kernels a boot compiled. Triton's cache key holds its version, the GPU's architecture and the kernel's
source and options, so one directory can serve every version and GPU that shares it."""

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from service.config import cache_root

log = logging.getLogger(__name__)

TRITON_ENV = "TRITON_CACHE_DIR"  # Triton reads it whenever it opens its cache, so setting it at boot suffices


def entries(directory: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(directory))
    except OSError:
        return 0


@dataclass(slots=True)
class KernelCache:
    directory: Path
    entries_at_start: int

    def compiled(self) -> int:
        """What this process compiled since use_kernel_cache: Triton writes one directory for each compiled
        kernel or launcher and nothing on a cache hit. (Another process sharing the directory adds to it too.)"""
        return max(0, entries(self.directory) - self.entries_at_start)


def use_kernel_cache(directory: str | None) -> KernelCache:
    """directory: the kernel_cache_dir setting; None: $TRITON_CACHE_DIR when set, else <cache root>/kernels.
    A directory that cannot be written is replaced by a temporary one, with a warning: serving matters more
    than a faster next boot."""
    chosen = Path(directory or os.environ.get(TRITON_ENV) or cache_root() / "kernels")
    try:
        chosen.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=chosen).close()
    except OSError as e:
        fallback = Path(tempfile.mkdtemp(prefix="kvmemo-kernels-"))
        log.warning("kernel cache %s is not writable (%s); compiling into %s, so the next boot compiles again",
                    chosen, e.strerror or e, fallback)
        chosen = fallback
    os.environ[TRITON_ENV] = str(chosen)
    cache = KernelCache(chosen, entries(chosen))
    log.info("compiled kernels are kept in %s (%d entries there)", chosen, cache.entries_at_start)
    return cache
