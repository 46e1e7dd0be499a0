"""The engine on a CUDA device: CUDA-graph decode equals eager decode equals the CPU reference path for the
same weights, and the memory profiler measures every component. CI has no GPU: run with `pytest -m gpu` on
a GPU machine."""

import copy
import gc

import pytest
import torch

from service.boot import build_engine
from service.config import EngineConfig
from service.engine.model_runner import ModelRunner
from service.engine.sampling_params import SamplingParams
from service.engine.scheduler import ScheduledSeq
from service.engine.sequence import Sequence
from service.engine.block_manager import BlockManager
from tests.engine.conftest import engine_over, run_to_completion

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

PROMPTS = [[256] + list(range(10, 10 + n)) for n in (3, 17, 40, 1, 64, 9, 33, 100, 2, 5, 70)]
COMMON = dict(model="tiny", dtype="float32", max_num_seqs=16, max_model_len=256, kv_cache_memory_bytes=64 << 20,
              plan_store="none")


def greedy_tokens(engine):
    for i, p in enumerate(PROMPTS):
        engine.add_request(str(i), p, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    tokens, _, _ = run_to_completion(engine)
    return [tokens[str(i)] for i in range(len(PROMPTS))]


def cpu_runner_with_weights_of(runner):
    loaded = copy.copy(runner.loaded)
    loaded.model = copy.deepcopy(runner.model).to("cpu")
    return ModelRunner(EngineConfig(device="cpu", **COMMON), loaded=loaded)


def step_logits(runner, seq, n):
    input_ids, positions, meta, _ = runner.prepare([ScheduledSeq(seq, n)])
    with torch.inference_mode():
        out = runner.model(input_ids, positions, runner.kv_caches, meta)
    seq.num_computed_tokens += n
    return out.cpu()


def test_gpu_logits_equal_cpu_logits_for_the_same_weights():
    gpu = ModelRunner(EngineConfig(device="cuda", **COMMON))
    cpu = cpu_runner_with_weights_of(gpu)
    for runner in (gpu, cpu):
        runner.allocate_kv_cache(32)
    seqs = [Sequence("g", list(PROMPTS[7]), SamplingParams()), Sequence("c", list(PROMPTS[7]), SamplingParams())]
    for seq in seqs:
        BlockManager(32, 16).allocate(seq, 200)
    diffs = [(step_logits(gpu, seqs[0], len(PROMPTS[7])) - step_logits(cpu, seqs[1], len(PROMPTS[7]))).abs().max()]
    for token in (5, 6, 7):
        for seq in seqs:
            seq.output_token_ids.append(token)
        diffs.append((step_logits(gpu, seqs[0], 1) - step_logits(cpu, seqs[1], 1)).abs().max())
    assert max(diffs) < 1e-3, diffs


def test_random_preset_weights_are_the_same_on_cpu_and_cuda():
    gpu = ModelRunner(EngineConfig(device="cuda", **COMMON)).model.state_dict()
    cpu = ModelRunner(EngineConfig(device="cpu", **COMMON)).model.state_dict()
    assert all(torch.equal(gpu[k].cpu(), cpu[k]) for k in cpu)


def test_cuda_graphs_equal_eager_equal_cpu():
    engine, _ = build_engine(EngineConfig(device="cuda", **COMMON))
    assert engine.runner.graphs is not None and engine.runner.graphs.sizes == [1, 2, 4, 8, 16]
    graphs = greedy_tokens(engine)
    eager_runner = ModelRunner(EngineConfig(device="cuda", enforce_eager=True, **COMMON), loaded=engine.runner.loaded)
    eager = greedy_tokens(engine_over(eager_runner, engine.block_manager.num_blocks))
    cpu_runner = cpu_runner_with_weights_of(engine.runner)
    cpu = greedy_tokens(engine_over(cpu_runner, engine.block_manager.num_blocks))
    assert eager == cpu
    assert graphs == eager


def test_profiler_measures_every_component_and_the_second_boot_skips_it(tmp_path):
    config = EngineConfig(model="qwen3-0.6b", max_num_seqs=32, max_model_len=2048, max_num_batched_tokens=2048,
                          plan_dir=str(tmp_path), kv_cache_policy="full")
    engine, cold = build_engine(config)
    c = cold.record.components
    assert cold.plan_source == "profile"
    assert c.weights > 1 << 30 and c.activation_peak > 0 and c.cudagraph > 0
    # Earlier tests in this process already created cuBLAS's handles and loaded the kernels, so the memory
    # outside the allocator may not grow here (a fresh process's `kvmemo profile` measures it: about 160 MiB).
    assert c.non_torch >= 0
    assert abs(cold.prediction_error_bytes) <= 256 << 20, cold.prediction_error_bytes
    assert greedy_tokens(engine)  # it serves
    del engine
    gc.collect()  # the runner and its graphs refer to each other
    torch.cuda.empty_cache()
    _, warm = build_engine(config)
    assert warm.plan_source == "file" and warm.phase_seconds["profile"] < 0.5


def seeded_and_greedy_tokens(engine):
    """Every other request sampled with its own seed, while decode steps are queued ahead on the GPU."""
    for i, p in enumerate(PROMPTS):
        params = (SamplingParams(max_tokens=24, temperature=0.8, top_p=0.9, seed=i, ignore_eos=True, logprobs=2)
                  if i % 2 else SamplingParams(max_tokens=24 + i, temperature=0, ignore_eos=True))
        engine.add_request(str(i), p, params)
    tokens, texts, reasons = run_to_completion(engine)
    return [(tokens[str(i)], texts[str(i)], reasons[str(i)]) for i in range(len(PROMPTS))]


def test_async_scheduling_in_cuda_graphs_equals_steps_one_at_a_time():
    engine, _ = build_engine(EngineConfig(device="cuda", **COMMON))
    assert engine.config.async_scheduling and engine.runner.graphs is not None
    ahead = seeded_and_greedy_tokens(engine)
    one_at_a_time = ModelRunner(EngineConfig(device="cuda", async_scheduling=False, **COMMON),
                                loaded=engine.runner.loaded)
    other = engine_over(one_at_a_time, engine.block_manager.num_blocks)
    one_at_a_time.capture_graphs(engine.runner.graphs.sizes)
    assert ahead == seeded_and_greedy_tokens(other)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_usable_blocks
