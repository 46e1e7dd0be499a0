"""The paged engine gives the same tokens as a contiguous KV cache (transformers' generate), whatever the
batch mix, chunked prefill or preemption."""

import pytest
import torch

from service.config import EngineConfig
from service.engine.model_runner import ModelRunner
from service.engine.sampling_params import SamplingParams
from tests.engine.conftest import engine_over, run_to_completion
from tests.hf_models import save_hf_model

PROMPT_LENS = [5, 17, 33, 64, 3, 90, 41, 16]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    hf = save_hf_model("llama", path, seed=3)
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, 300, (n,), generator=gen).tolist() for n in PROMPT_LENS]
    with torch.no_grad():
        expected = [hf.generate(torch.tensor([p]), max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS,
                                do_sample=False, pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    return path, prompts, expected


@pytest.mark.parametrize(
    "max_num_batched_tokens, num_blocks, max_num_seqs",
    [
        (4096, 200, 8),  # everything at once
        (32, 200, 8),  # chunked prefill: prompts split over several steps, mixed with decodes
        (64, 16, 8),  # too few blocks for all: preemption by recompute, then resume
        (48, 200, 2),  # at most two running: the rest wait their turn
    ],
)
def test_paged_engine_matches_contiguous_greedy(hf_model_dir, max_num_batched_tokens, num_blocks, max_num_seqs):
    path, prompts, expected = hf_model_dir
    config = EngineConfig(model=str(path), device="cpu", dtype="float32", max_num_batched_tokens=max_num_batched_tokens,
                          max_num_seqs=max_num_seqs, block_size=8, max_model_len=120)
    engine = engine_over(ModelRunner(config), num_blocks)
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True))
    tokens, _, reasons = run_to_completion(engine)
    assert [tokens[str(i)] for i in range(len(prompts))] == expected
    assert set(reasons.values()) == {"length"}
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_usable_blocks
    if num_blocks == 16:
        assert engine.scheduler.num_preemptions > 0


def test_seeded_sampling_is_independent_of_the_batch(tiny_runner):
    from tests.engine.conftest import make_engine

    params = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.9, top_k=50, seed=1234)
    engine = make_engine(tiny_runner)
    engine.add_request("alone", [256, 10, 20, 30], params)
    alone, _, _ = run_to_completion(engine)

    engine = make_engine(tiny_runner, max_num_batched_tokens=8)
    for i in range(5):
        engine.add_request(f"other{i}", [256] + list(range(40 + i, 60 + i)), SamplingParams(max_tokens=20, temperature=1.0))
    engine.add_request("mixed", [256, 10, 20, 30], params)
    mixed, _, _ = run_to_completion(engine)
    assert mixed["mixed"] == alone["alone"]
