"""What every benchmark records beside its numbers: device, versions, command and date."""

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu-{platform.processor() or platform.machine()}"


def device_slug() -> str:
    return device_name().lower().replace("nvidia ", "").replace(" ", "-")


def environment() -> dict:
    env = {"device": device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version(), "command": " ".join(["python3"] + sys.argv),
           "date": datetime.date.today().isoformat(), "commit": commit()}
    for name in ("triton", "transformers", "grpc"):
        try:
            env[name] = __import__(name).__version__
        except Exception:
            pass
    return env


def commit() -> str | None:
    """The source's commit: $KVMEMO_COMMIT (a copied tree has no .git), else git's answer."""
    if os.environ.get("KVMEMO_COMMIT"):
        return os.environ["KVMEMO_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")


def seconds_per_call(fn, repeats: int, warm_up: int = 3, cuda: bool = True) -> float:
    """Mean seconds of fn(i) over i = 0 .. repeats-1, after `warm_up` untimed calls (fn(0), fn(1), ...).
    With cuda, CUDA events on the current stream time the calls' GPU work queued back to back; without, the
    wall clock times the calls themselves."""
    for i in range(warm_up):
        fn(i)
    if not cuda:
        began = time.perf_counter()
        for i in range(repeats):
            fn(i)
        return (time.perf_counter() - began) / repeats
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(repeats):
        fn(i)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / repeats


def measure_copy_bandwidth_gb_s(num_bytes: int = 2 << 30) -> float | None:
    """Device-to-device copy bandwidth (read + write bytes per second), the ceiling decode is measured against."""
    if not torch.cuda.is_available():
        return None
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    seconds = seconds_per_call(lambda _: dst.copy_(src), repeats=10, warm_up=1)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * num_bytes / seconds / 1e9
