"""bench/prefill.py: each chunk size bounds the prefill steps' tokens, and the engine is left empty."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.prefill import attention_flops, chunk_row, kernel_row  # noqa: E402
from service.boot import build_engine  # noqa: E402
from service.config import EngineConfig  # noqa: E402


def test_chunk_sizes_set_the_number_of_prefill_steps():
    engine, _ = build_engine(EngineConfig(model="tiny", max_num_seqs=4, max_num_batched_tokens=128,
                                          max_model_len=256, plan_store="none"))
    rows = [chunk_row(engine, chunk, requests=4, prompt_len=96) for chunk in (32, 128)]
    # 4 prompts of 96 tokens: 12 chunks of 32 tokens, 3 of 128, and one more step each that only returns the
    # last chunk's outputs (a step's outputs are built while the next one runs).
    assert [r["steps"] for r in rows] == [13, 4]
    assert all(r["prefill_tokens_per_s"] > 0 and r["prefill_tflop_s"] > 0 for r in rows)
    assert not engine.has_unfinished()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_usable_blocks


def test_attention_flops_count_cached_and_causal_pairs():
    # One token after 3 cached: it sees 4 keys; two new tokens after none: 1 + 2 pairs.
    per_pair = 2 * 2 * 32 * 128
    assert attention_flops(1, 1, 3) == 4 * per_pair
    assert attention_flops(1, 2, 0) == 3 * per_pair


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", [(2, 64, 0), (2, 48, 80)])
def test_gpu_kernel_row_agrees_with_sdpa(case):
    row = kernel_row(*case)
    assert row["max_abs_diff_vs_sdpa"] < 2e-2
