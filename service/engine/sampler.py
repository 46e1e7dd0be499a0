"""Batched sampling on the device, with one host transfer per step (the sampled ids), not one per row.

Sampling uses the exponential-race trick: argmax(p / E) with E ~ Exp(1) draws from p. Rows with a seed
draw their noise from a generator seeded by (seed, output index), so a seeded request gives the same
tokens whatever else shares its batch."""

from dataclasses import dataclass

import torch

from service.engine.sampling_params import SamplingParams


@dataclass(slots=True)
class SamplingBatch:
    params: list[SamplingParams]
    output_lens: list[int]  # tokens each row has generated so far (the seeded noise's step)


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[list[tuple[int, float]] | None]  # per row: [(sampled id, lp), (top ids, lp)...] or None


def _apply_top_k_top_p_min_p(logits, top_k, top_p, min_p):
    """Masks logits ([rows, vocab], float32) outside each row's top-k / top-p / min-p set to -inf."""
    sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    ranks = torch.arange(vocab, device=logits.device).expand_as(sorted_logits)
    k = torch.where(top_k > 0, top_k, vocab).unsqueeze(1)
    remove = ranks >= k
    probs = sorted_logits.softmax(dim=-1)
    cumulative = probs.cumsum(dim=-1) - probs  # probability mass strictly before each token
    remove |= cumulative >= top_p.unsqueeze(1)
    remove |= probs < (min_p.unsqueeze(1) * probs[:, :1])
    remove[:, 0] = False  # the most likely token always survives
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(1, sorted_idx, sorted_logits)


def sample(logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
    """logits: [rows, vocab] float32, one row per sampling sequence."""
    device = logits.device
    params = batch.params
    if all(p.greedy for p in params):  # no softmax or noise over the vocabulary
        return _with_logprobs(logits, logits.argmax(dim=-1), params)
    greedy = torch.tensor([p.greedy for p in params], device=device)
    temperature = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params], device=device)
    scaled = logits / temperature.unsqueeze(1)
    if any(p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0.0 for p in params if not p.greedy):
        top_k = torch.tensor([p.top_k for p in params], device=device)
        top_p = torch.tensor([p.top_p for p in params], device=device)
        min_p = torch.tensor([p.min_p for p in params], device=device)
        scaled = _apply_top_k_top_p_min_p(scaled, top_k, top_p, min_p)
    probs = scaled.softmax(dim=-1)
    noise = torch.empty_like(probs).exponential_()
    for i, p in enumerate(params):
        if p.seed is not None and not p.greedy:
            gen = torch.Generator(device=device)
            gen.manual_seed((p.seed * 1_000_003 + batch.output_lens[i]) % (2**63))
            noise[i].exponential_(generator=gen)
    sampled = torch.where(greedy, logits.argmax(dim=-1), (probs / noise).argmax(dim=-1))
    return _with_logprobs(logits, sampled, params)


def _with_logprobs(logits: torch.Tensor, sampled: torch.Tensor, params: list[SamplingParams]) -> SamplerOutput:
    """The one host transfer of a step: sampled ids, and the requested logprobs with them."""
    rows = len(params)
    want_logprobs = [p.logprobs is not None for p in params]
    if not any(want_logprobs):
        return SamplerOutput(sampled.tolist(), [None] * rows)
    logprobs = logits.log_softmax(dim=-1)
    top_n = max(p.logprobs for p in params if p.logprobs is not None)
    top_values, top_ids = logprobs.topk(max(top_n, 1), dim=-1)
    chosen = logprobs.gather(1, sampled.unsqueeze(1)).squeeze(1)
    ids, chosen, top_values, top_ids = sampled.tolist(), chosen.tolist(), top_values.tolist(), top_ids.tolist()
    out = []
    for i, p in enumerate(params):
        if p.logprobs is None:
            out.append(None)
        else:
            out.append([(ids[i], chosen[i])] + list(zip(top_ids[i][: p.logprobs], top_values[i][: p.logprobs])))
    return SamplerOutput(ids, out)
