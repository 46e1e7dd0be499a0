"""Boots on a CUDA device, each in a fresh process as a restarted pod would be: a warm boot compiles no kernel
that the cold boot compiled (the kernel cache persists); two cold profiles of one configuration suggest sizes
within 64 MiB of each other; the kernel warm-up beside the load leaves profiling nothing to compile; and the
constrained check's allocator limit holds with expandable segments. CI has no GPU: run with `pytest -m gpu` on a
GPU machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20

BOOT = """
import json, sys
from service.boot import build_engine
from service.config import EngineConfig
engine, report = build_engine(EngineConfig(**json.loads(sys.argv[1])))
print(json.dumps({"source": report.plan_source, "compiled": report.kernels_compiled,
                  "load_seconds": report.load_seconds,
                  "full": report.record.suggestions.full_bytes if report.record else None,
                  "components": report.record.to_json()["components"] if report.record else None}))
"""


def in_fresh_process(code: str, config: dict | None = None):
    """Runs code in a new Python process (config as its JSON argument); returns its last line of output, parsed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_CACHE_DIR", None)
    result = subprocess.run([sys.executable, "-c", code, json.dumps(config or {})], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def boot_in_fresh_process(**config) -> dict:
    return in_fresh_process(BOOT, config)


def test_a_warm_boot_compiles_nothing_the_cold_boot_compiled(tmp_path):
    config = dict(model="tiny", max_model_len=256, max_num_seqs=8, max_num_batched_tokens=256,
                  plan_dir=str(tmp_path / "plans"), kernel_cache_dir=str(tmp_path / "kernels"))
    cold = boot_in_fresh_process(**config)
    assert cold["source"] == "profile" and cold["compiled"] > 0
    assert set(cold["load_seconds"]) == {"cuda_init", "build_model", "generate", "kernels"}
    warm = boot_in_fresh_process(**config)
    assert warm["source"] == "file" and warm["compiled"] == 0, warm
    assert "kernels" not in warm["load_seconds"]  # a filled cache: no warm-up beside the load


@pytest.mark.parametrize("eager", [False, True])
def test_two_cold_profiles_in_fresh_processes_agree_within_64_mib(tmp_path, eager):
    """And compiling counts for nothing: a profile that finds every kernel compiled agrees with them too."""
    config = dict(model="qwen3-0.6b", max_model_len=4096, max_num_seqs=64, max_num_batched_tokens=4096,
                  enforce_eager=eager, kv_cache_policy="full", plan_store="none")
    first = boot_in_fresh_process(**config, kernel_cache_dir=str(tmp_path / "first"))
    second = boot_in_fresh_process(**config, kernel_cache_dir=str(tmp_path / "second"))
    compiled = boot_in_fresh_process(**config, kernel_cache_dir=str(tmp_path / "first"))
    assert first["source"] == second["source"] == compiled["source"] == "profile"
    assert first["compiled"] > 0 and compiled["compiled"] == 0
    for other in (second, compiled):
        assert abs(first["full"] - other["full"]) <= 64 * MiB, (first["components"], other["components"])


PROFILE_AFTER_LOAD = """
import json, sys
import torch
from service.boot import load_and_fingerprint
from service.config import EngineConfig
from service.memory import profiler
config = EngineConfig(**json.loads(sys.argv[1]))
loaded = load_and_fingerprint(config)
after_load = loaded.kernels.compiled()
holes = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
profiler.profile(loaded.runner, config, loaded.baseline, loaded.weights)
print(json.dumps({"after_load": after_load, "after_profile": loaded.kernels.compiled(), "holes": holes,
                  "warmed_up": "kernels" in loaded.seconds}))
"""


@pytest.mark.parametrize("model", ["llama-3-8b", "qwen3-0.6b"])
def test_the_kernel_warm_up_beside_the_load_compiles_every_kernel_profiling_launches(tmp_path, model):
    """And it leaves no holes in the allocator's segments: a boot from a filled cache, which skips the warm-up,
    has as little reserved beyond what is allocated after loading."""
    config = dict(model=model, max_model_len=4096, max_num_seqs=256, max_num_batched_tokens=8192,
                  plan_store="none", kernel_cache_dir=str(tmp_path / "kernels"))
    cold = in_fresh_process(PROFILE_AFTER_LOAD, config)
    assert cold["warmed_up"] and cold["after_load"] > 0 and cold["after_profile"] == cold["after_load"], cold
    warm = in_fresh_process(PROFILE_AFTER_LOAD, config)
    assert not warm["warmed_up"] and warm["after_profile"] == 0, warm
    assert cold["holes"] <= warm["holes"] + 16 * MiB, (cold, warm)


LIMITED = """
import json
import torch
from service.boot import use_expandable_segments
use_expandable_segments()
from service.memory.profiler import allocator_limited_to
MiB = 1 << 20
x = torch.empty(64 * MiB, dtype=torch.uint8, device="cuda")
del x
results = {}
for label, budget, size in (("fits", 512 * MiB, 256 * MiB), ("too_big", 512 * MiB, 1024 * MiB)):
    with allocator_limited_to(torch.device("cuda", 0), budget):
        try:
            y = torch.empty(size, dtype=torch.uint8, device="cuda")
            del y
            results[label] = "ran"
        except torch.OutOfMemoryError:
            results[label] = "oom"
z = torch.empty(4096 * MiB, dtype=torch.uint8, device="cuda")  # the limit is lifted
results["after"] = "ran"
print(json.dumps(results))
"""


def test_the_allocator_limit_refuses_what_the_budget_does_not_hold_with_expandable_segments():
    assert in_fresh_process(LIMITED) == {"fits": "ran", "too_big": "oom", "after": "ran"}
