"""The engine on a CUDA device: CUDA-graph decode equals eager decode equals the CPU reference path, and the
memory profiler measures every component. CI has no GPU: run with `pytest -m gpu` on a GPU machine."""

import pytest
import torch

from service.boot import build_engine
from service.config import EngineConfig
from service.engine.engine import LLMEngine
from service.engine.sampling import SamplingParams
from tests.engine.conftest import run_to_completion

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

PROMPTS = [[256] + list(range(10, 10 + n)) for n in (3, 17, 40, 1, 64, 9, 33, 100, 2, 5, 70)]


def greedy_tokens(engine):
    for i, p in enumerate(PROMPTS):
        engine.add_request(str(i), p, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    tokens, _, _ = run_to_completion(engine)
    return [tokens[str(i)] for i in range(len(PROMPTS))]


def test_cuda_graphs_equal_eager_equal_cpu():
    common = dict(model="tiny", dtype="float32", max_num_seqs=16, max_model_len=256, kv_cache_memory_bytes=64 << 20,
                  plan_store="none")
    cpu = greedy_tokens(LLMEngine(EngineConfig(device="cpu", **common)))
    eager = greedy_tokens(build_engine(EngineConfig(device="cuda", enforce_eager=True, **common))[0])
    engine, _ = build_engine(EngineConfig(device="cuda", **common))
    assert engine.runner.graphs is not None and engine.runner.graphs.sizes == [1, 2, 4, 8, 16]
    graphs = greedy_tokens(engine)
    assert graphs == eager == cpu


def test_profiler_measures_every_component_and_the_second_boot_skips_it(tmp_path):
    config = EngineConfig(model="qwen3-0.6b", max_num_seqs=32, max_model_len=2048, max_num_batched_tokens=2048,
                          plan_dir=str(tmp_path), kv_cache_policy="full")
    engine, cold = build_engine(config)
    c = cold.record.components
    assert cold.plan_source == "profile"
    assert c.weights > 1 << 30 and c.activation_peak > 0 and c.non_torch > 0 and c.cudagraph > 0
    assert abs(cold.prediction_error_bytes) <= 256 << 20, cold.prediction_error_bytes
    assert greedy_tokens(engine)  # it serves
    del engine
    torch.cuda.empty_cache()
    _, warm = build_engine(config)
    assert warm.plan_source == "file" and warm.phase_seconds["profile"] < 0.5
