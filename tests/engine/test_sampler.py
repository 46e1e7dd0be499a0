"""The sampler's filters and distribution, on known logits."""

import torch

from service.engine.sampler import SamplingBatch, sample
from service.engine.sampling_params import SamplingParams

LOGITS = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.07, 0.03]]))


def draw(params: SamplingParams, n: int = 2000) -> torch.Tensor:
    logits = LOGITS.expand(n, -1).contiguous()
    out = sample(logits, SamplingBatch([params] * n, [0] * n))
    return torch.bincount(torch.tensor(out.token_ids), minlength=5).float() / n


def test_plain_sampling_follows_the_softmax():
    torch.manual_seed(0)
    freq = draw(SamplingParams(temperature=1.0))
    assert torch.allclose(freq, LOGITS.exp()[0], atol=0.04)


def test_top_k_top_p_min_p_keep_only_their_sets():
    torch.manual_seed(0)
    assert draw(SamplingParams(top_k=2))[2:].sum() == 0
    assert draw(SamplingParams(top_p=0.7))[2:].sum() == 0  # 0.5 + 0.25 reaches 0.7
    assert draw(SamplingParams(min_p=0.4))[2:].sum() == 0  # 0.15 < 0.4 x 0.5
    assert draw(SamplingParams(top_k=1))[0] == 1.0


def test_temperature_sharpens_and_greedy_is_argmax():
    torch.manual_seed(0)
    assert draw(SamplingParams(temperature=0.3))[0] > 0.8
    assert draw(SamplingParams(temperature=0))[0] == 1.0


def test_seeded_rows_repeat_and_differ_by_step():
    params = SamplingParams(temperature=1.0, seed=7)
    logits = torch.zeros(2, 1000)
    a = sample(logits, SamplingBatch([params, params], [0, 1])).token_ids
    b = sample(logits, SamplingBatch([params, params], [0, 1])).token_ids
    assert a == b and a[0] != a[1]


def test_a_temperature_below_the_epsilon_is_greedy():
    from service.engine.sampling_params import TEMPERATURE_EPSILON
    assert SamplingParams(temperature=5e-324).greedy and SamplingParams(temperature=TEMPERATURE_EPSILON / 2).greedy
    assert not SamplingParams(temperature=TEMPERATURE_EPSILON).greedy
    assert draw(SamplingParams(temperature=5e-324))[0] == 1.0


def test_a_row_whose_parameters_make_no_tensor_fails_alone():
    """Validation stops these; should one get through, only its row is marked failed, and a top_k past any
    int64 is clamped to the vocabulary rather than overflowing the batch's tensor."""
    torch.manual_seed(0)
    logits = LOGITS.expand(3, -1).contiguous()
    params = [SamplingParams(temperature=1.0, top_k=10**30), SamplingParams(temperature=1.0, top_p="x"),
              SamplingParams(temperature=0)]
    out = sample(logits, SamplingBatch(params, [0, 0, 0]))
    assert set(out.failed) == {1} and "sampling parameters" in out.failed[1]
    assert out.token_ids[2] == 0 and len(out.token_ids) == 3


def test_bfloat16_logits_sample_as_their_float32_values_do():
    """The model hands the sampler logits in its own dtype. Greedy rows take the argmax of the bfloat16
    values (exact in float32, so the same token), and rows that sample or return logprobs compute in float32."""
    torch.manual_seed(0)
    logits = torch.randn(64, 3000).to(torch.bfloat16)
    greedy = SamplingParams(temperature=0)
    assert sample(logits, SamplingBatch([greedy] * 64, [0] * 64)).token_ids == logits.float().argmax(-1).tolist()

    params = [SamplingParams(temperature=0.8, top_k=40, seed=3, logprobs=2), SamplingParams(temperature=0, logprobs=2)]
    before = logits[:2].clone()
    ours = sample(logits[:2], SamplingBatch(params, [0, 0]))
    theirs = sample(logits[:2].float(), SamplingBatch(params, [0, 0]))
    assert torch.equal(logits[:2], before)
    assert ours.token_ids == theirs.token_ids
    assert ours.logprobs == theirs.logprobs
    assert ours.token_ids[1] == logits[1].float().argmax().item()
