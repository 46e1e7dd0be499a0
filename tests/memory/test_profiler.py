"""The dummy steps profiling runs (the shapes serving runs, sampled the most expensive way), and the activation
peak checked under constraint: from the unconstrained peak up in fixed steps until the dummy steps run with only
that much memory free. The GPU run of the same code is in tests/engine/test_gpu_engine.py."""

import functools
import logging

import pytest
from hypothesis import given, settings, strategies as st

from service.memory import profiler
from service.memory.memory_profile import MiB


def test_the_peak_stands_when_every_batch_runs_within_it(monkeypatch):
    tried = []
    monkeypatch.setattr(profiler, "runs_within", lambda runner, steps, budget: tried.append(budget) or True)
    assert profiler.constrained_activation_peak(None, ([1], [2]), 1000 * MiB) == 1000 * MiB
    assert tried == [1000 * MiB]  # both steps under one limit


def test_fragmentation_raises_the_peak_one_step_at_a_time_and_says_so(monkeypatch, caplog):
    needed = 1000 * MiB + 300 * MiB  # what the long batch needs beside a full KV cache
    monkeypatch.setattr(profiler, "runs_within", lambda runner, steps, budget: budget >= needed)
    with caplog.at_level(logging.INFO):
        peak = profiler.constrained_activation_peak(None, ([1], [2]), 1000 * MiB)
    assert peak == 1000 * MiB + 2 * profiler.CONSTRAINED_STEP_BYTES
    assert "with memory to spare" in caplog.text


def test_the_search_ends_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(profiler, "runs_within", lambda runner, steps, budget: False)
    peak = profiler.constrained_activation_peak(None, ([1],), 0)
    assert peak == profiler.CONSTRAINED_MAX_STEPS * profiler.CONSTRAINED_STEP_BYTES
    assert "still ran out of memory" in caplog.text


def test_the_constrained_check_runs_the_steps_back_to_back_over_one_kv_cache(monkeypatch):
    """runs_within with the CUDA calls stood in for (this machine has no GPU): one KV cache for all the steps,
    each run once while the allocator may take only the budget beyond what it reserves, and an out-of-memory
    step fails the budget. The limit is lifted afterwards, whatever happened."""
    import torch

    runner = small_runner()
    fractions = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000 * MiB, 2000 * MiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 100 * MiB)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: fractions.append(fraction))
    steps = profiler.serving_steps(512, 8, 256)[:2]
    caches, ran = [], []
    real_allocate, real_run = runner.allocate_kv_cache, runner.dummy_run
    monkeypatch.setattr(runner, "allocate_kv_cache", lambda n: caches.append(n) or real_allocate(n))
    monkeypatch.setattr(runner, "dummy_run", lambda lens, decodes: ran.append((tuple(lens), decodes)) or
                        real_run(lens, decodes))
    assert profiler.runs_within(runner, steps, 500 * MiB)
    assert caches == [max(s.num_blocks(runner.layout) for s in steps)] and not runner.kv_caches
    assert ran == [(s.prefill_lens, s.decodes) for s in steps]
    assert fractions == [600 / 2000, 1.0]
    assert profiler.runs_within(runner, steps, 5000 * MiB)  # never more than is free
    assert fractions[2:] == [1100 / 2000, 1.0]

    def out_of_memory(lens, decodes):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(runner, "dummy_run", out_of_memory)
    assert not profiler.runs_within(runner, steps, 1000 * MiB)
    assert fractions[-1] == 1.0


def test_a_cpu_activation_peak_is_never_below_what_the_batch_tensors_hold():
    """RSS can read no growth at all when the batch reuses freed heap pages (it did under `taskset -c 0`):
    the profile still counts at least the tensors the batch provably holds at once."""
    runner = small_runner()
    step = profiler.mixed_step(512, 8, 256)
    floor = profiler.activation_floor_bytes(runner.model_config, runner.layout, step.num_tokens)
    cfg = runner.model_config
    assert floor >= 512 * (cfg.hidden_size + 3 * cfg.intermediate_size) * 4  # float32 on the CPU
    for _ in range(3):  # later passes reuse the first one's freed pages
        assert profiler.measure_steps_peak(runner, [step]) >= floor
    assert profiler.measure_activation_peak(runner, 512) >= floor


@functools.cache
def small_runner():
    """One tiny CPU runner for this module; every test frees the KV cache it allocates."""
    from service.config import EngineConfig
    from service.engine.model_runner import ModelRunner

    return ModelRunner(EngineConfig(model="tiny", device="cpu", max_model_len=256, max_num_seqs=8,
                                    max_num_batched_tokens=512))


@settings(max_examples=300, deadline=None)
@given(budget=st.integers(1, 20_000), seats=st.integers(1, 1024), max_model_len=st.integers(2, 10_000))
def test_the_mixed_step_fills_every_seat_and_the_token_budget(budget, seats, max_model_len):
    step = profiler.mixed_step(budget, seats, max_model_len)
    assert step.num_seqs == min(seats, budget)
    assert step.num_tokens == min(budget, seats * (max_model_len - 1))
    assert step.prefill_lens and all(1 <= n <= max_model_len - 1 for n in step.prefill_lens)
    assert step.prefill_lens[0] == max(step.prefill_lens)  # the largest chunk the budget allows


def test_the_mixed_step_of_the_soak_shapes():
    """The H200 soaks' shapes (bench/memory.py: 8192 tokens, 256 seats): a busy server's step is every other
    seat decoding beside the largest prefill chunks."""
    assert profiler.mixed_step(8192, 256, 4096) == profiler.DummyStep((4095, 3843), 254)  # Llama-3-8B
    assert profiler.mixed_step(8192, 256, 8192) == profiler.DummyStep((7937,), 255)  # Qwen3-0.6B


@given(block_size=st.integers(1, 32), extra_blocks=st.integers(0, 300))
def test_a_step_fitted_to_a_small_kv_cache_fits_it(block_size, extra_blocks):
    import torch

    from service.engine.kv_layout import KVLayout

    max_blocks = -(-256 // block_size)
    layout = KVLayout(block_size=block_size, bytes_per_block=1, max_blocks_per_seq=max_blocks, max_model_len=256,
                      max_num_seqs=8, num_layers=1, num_kv_heads=1, head_dim=1, dtype=torch.float32)
    blocks = layout.min_num_blocks + extra_blocks
    step = profiler.fitted(profiler.mixed_step(512, 8, 256), layout, blocks)
    decode_table = -(-2 // block_size) if step.decodes else 0  # dummy_run narrows the shared table to this
    assert layout.blocks_for(list(step.prefill_lens)) + decode_table <= blocks and step.prefill_lens


@pytest.mark.parametrize("extra_blocks, expected", [
    (0, profiler.DummyStep((255,))),  # the smallest cache: one max_model_len sequence
    (3, profiler.DummyStep((255, 48))),
    (17, profiler.DummyStep((255, 251), 6)),  # one block left: the decodes' shared table
])
def test_the_warm_up_step_runs_in_a_small_kv_cache(extra_blocks, expected):
    runner = small_runner()
    runner.allocate_kv_cache(runner.layout.min_num_blocks + extra_blocks)
    try:
        step = profiler.fitted(profiler.mixed_step(512, 8, 256), runner.layout, runner.num_kv_blocks)
        assert step == expected
        step.run(runner)
    finally:
        runner.free_kv_cache()


def test_profiling_runs_the_mixed_step_and_samples_every_row_the_expensive_way(monkeypatch):
    """What serving runs and the dummy steps once did not: decodes beside a prefill in one step, and the
    top-k/top-p sort (with logprobs) over max_num_seqs rows of the step's own logits, not of fresh ones. The
    serving steps as CUDA runs them back to back (a CPU runs the first alone: the next test)."""
    import service.engine.model_runner as model_runner

    runner = small_runner()
    steps, sampled = [], []
    real_run = runner.run

    def run(batch):
        steps.append((sum(s.num_new_tokens == 1 for s in batch), sum(s.num_new_tokens for s in batch), len(batch)))
        return real_run(batch)

    def recorded(real):
        def sampler(logits, batch):
            sampled.append((len(steps), logits.shape[0], batch.params))
            return real(logits, batch)
        return sampler

    monkeypatch.setattr(runner, "run", run)
    for name in ("sample", "sample_on_device"):  # a step's sampling, and the pass over fresh logits
        monkeypatch.setattr(model_runner, name, recorded(getattr(model_runner, name)))
    profiler.measure_steps_peak(runner, profiler.serving_steps(512, 8, 256))
    decodes, tokens, seqs = steps[0]
    assert decodes == 8 - 2 and tokens == 512 and seqs == 8  # two prefills of 255 and 251 beside six decodes
    assert (8, 8, 8) in steps  # the pure decode step of max_num_seqs rows
    step_of_mixed, rows, params = sampled[0]
    assert step_of_mixed == 1 and rows == 8, "the mixed step's own logits are sampled, at max_num_seqs rows"
    assert [(k, r) for k, r, _ in sampled if k == 2] == [(2, 3), (2, 8)], \
        "the long prompts' three rows, then a pass over max_num_seqs rows of fresh logits"
    for _, _, params in sampled:
        assert all(p.top_k > 0 and p.top_p < 1 and not p.greedy and p.logprobs for p in params)


def test_a_cpu_profile_runs_the_mixed_step_alone_and_counts_the_others_floors(monkeypatch):
    """Host memory has no caching allocator for one step to fragment for the next, and each step of the whole
    budget takes seconds on a CPU: only the mixed step runs, and the peak is never below any step's floor."""
    runner = small_runner()
    ran = []
    real_run = runner.dummy_run
    monkeypatch.setattr(runner, "dummy_run", lambda lens, decodes: ran.append((tuple(lens), decodes)) or
                        real_run(lens, decodes))
    peak = profiler.measure_activation_peak(runner, 512)
    mixed = profiler.mixed_step(512, 8, 256)
    assert ran == [(mixed.prefill_lens, mixed.decodes)]
    floors = [profiler.activation_floor_bytes(runner.model_config, runner.layout, s.num_tokens)
              for s in profiler.serving_steps(512, 8, 256)]
    assert peak >= max(floors)
