"""bench/step_breakdown.py: the decode-step breakdown measures full batches and leaves the engine empty."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.step_breakdown import busy_microseconds, decode_breakdown, kernel_category  # noqa: E402
from service.boot import build_engine  # noqa: E402
from service.config import EngineConfig  # noqa: E402


def test_gpu_busy_time_counts_overlapping_kernels_once():
    assert busy_microseconds([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17
    assert busy_microseconds([]) == 0


def test_kernels_are_sorted_by_name():
    assert kernel_category("sm90_xmma_gemm_bf16bf16_bf16f32") == "gemm"
    assert kernel_category("nvjet_tst_128x64_64x4_1x2_h_bz_coopB_NNT") == "gemm"
    assert kernel_category("_split_kernel") == "attention"
    assert kernel_category("void at::native::reduce_kernel<512, 1, ArgMaxOps>") == "sampler"
    assert kernel_category("Memcpy HtoD (Pinned -> Device)") == "copies"
    assert kernel_category("_add_rms_norm_kernel") == "elementwise_other"


def test_breakdown_measures_the_whole_batch_and_drains_the_engine():
    engine, _ = build_engine(EngineConfig(model="tiny", max_num_seqs=8, max_num_batched_tokens=64,
                                          max_model_len=256, plan_store="none"))
    row = decode_breakdown(engine, batch=6, prompt_len=40, context_steps=3, steps=3)
    assert row["running_after_windows"] == 6 and row["mean_context_tokens"] >= 40 + 3
    assert row["wall_step_ms"] > 0 and row["host_functions_ms"]
    assert not engine.has_unfinished()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_usable_blocks
