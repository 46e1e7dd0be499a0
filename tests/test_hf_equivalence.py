"""Our logits equal Hugging Face transformers' for the same random weights (fp32, CPU)."""

import pytest
import torch

from service.config import EngineConfig
from service.engine.block_manager import BlockManager
from service.engine.model_runner import ModelRunner
from service.engine.scheduler import ScheduledSeq
from service.engine.sampling_params import SamplingParams
from service.engine.sequence import Sequence
from tests.hf_models import save_hf_model

TOLERANCE = 1e-4


def run_step(runner, seq, num_new):
    """One forward pass over seq's next num_new tokens; returns the logits of every new token."""
    batch = [ScheduledSeq(seq, num_new)]
    input_ids, positions, meta, _ = runner.prepare(batch)
    with torch.no_grad():
        logits = runner.model(input_ids, positions, runner.kv_caches, meta)
    seq.num_computed_tokens += num_new
    return logits


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_logits_match_transformers_at_prefill_and_every_decode_step(kind, tmp_path):
    hf = save_hf_model(kind, tmp_path)
    config = EngineConfig(model=str(tmp_path), device="cpu", dtype="float32", block_size=16)
    runner = ModelRunner(config)
    runner.allocate_kv_cache(32)
    blocks = BlockManager(32, 16)
    prompt = torch.randint(3, 300, (21,), generator=torch.Generator().manual_seed(1)).tolist()
    seq = Sequence("r", prompt, SamplingParams(max_tokens=32, temperature=0))

    blocks.allocate(seq, len(prompt))
    ours = run_step(runner, seq, len(prompt))
    with torch.no_grad():
        theirs = hf(torch.tensor([prompt])).logits[0]
    assert (ours - theirs).abs().max().item() < TOLERANCE

    tokens = list(prompt)
    for _ in range(32):
        nxt = int(ours[-1].argmax())
        tokens.append(nxt)
        seq.output_token_ids.append(nxt)
        blocks.allocate(seq, seq.num_tokens)
        ours = run_step(runner, seq, 1)
        with torch.no_grad():
            theirs = hf(torch.tensor([tokens])).logits[0, -1:]
        assert (ours - theirs).abs().max().item() < TOLERANCE

    with torch.no_grad():
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, min_new_tokens=32,
                               pad_token_id=0)[0, len(prompt):].tolist()
    assert tokens[len(prompt):] == expected
