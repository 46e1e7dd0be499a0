"""The activation peak checked under constraint: from the unconstrained peak up in fixed steps until every dummy
batch runs with only that much memory free. The GPU run of the same code is in tests/engine/test_gpu_engine.py."""

import logging

from service.memory import profiler
from service.memory.memory_profile import MiB


def test_the_peak_stands_when_every_batch_runs_within_it(monkeypatch):
    tried = []
    monkeypatch.setattr(profiler, "runs_within", lambda runner, lens, budget: tried.append(budget) or True)
    assert profiler.constrained_activation_peak(None, ([1], [2]), 1000 * MiB) == 1000 * MiB
    assert tried == [1000 * MiB, 1000 * MiB]


def test_fragmentation_raises_the_peak_one_step_at_a_time_and_says_so(monkeypatch, caplog):
    needed = 1000 * MiB + 300 * MiB  # what the long batch needs beside a full KV cache
    monkeypatch.setattr(profiler, "runs_within", lambda runner, lens, budget: lens == [1] or budget >= needed)
    with caplog.at_level(logging.INFO):
        peak = profiler.constrained_activation_peak(None, ([1], [2]), 1000 * MiB)
    assert peak == 1000 * MiB + 2 * profiler.CONSTRAINED_STEP_BYTES
    assert "with memory to spare" in caplog.text


def test_the_search_ends_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(profiler, "runs_within", lambda runner, lens, budget: False)
    peak = profiler.constrained_activation_peak(None, ([1],), 0)
    assert peak == profiler.CONSTRAINED_MAX_STEPS * profiler.CONSTRAINED_STEP_BYTES
    assert "still ran out of memory" in caplog.text


def test_a_cpu_activation_peak_is_never_below_what_the_batch_tensors_hold():
    """RSS can read no growth at all when the batch reuses freed heap pages (it did under `taskset -c 0`):
    the profile still counts at least the tensors the batch provably holds at once."""
    from service.config import EngineConfig
    from service.engine.model_runner import ModelRunner

    runner = ModelRunner(EngineConfig(model="tiny", device="cpu", max_model_len=256, max_num_seqs=8,
                                      max_num_batched_tokens=512))
    lens = profiler.dummy_prompt_lens(512, 8, 256)
    floor = profiler.activation_floor_bytes(runner.model_config, runner.layout, lens)
    cfg = runner.model_config
    assert floor >= 512 * (cfg.hidden_size + 3 * cfg.intermediate_size) * 4  # float32 on the CPU
    for _ in range(3):  # later passes reuse the first one's freed pages
        assert profiler.measure_batch_peak(runner, lens) >= floor
    assert profiler.measure_activation_peak(runner, 512) >= floor
