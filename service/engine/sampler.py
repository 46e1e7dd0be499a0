"""Batched sampling on the device, with one host transfer per step (the sampled ids), not one per row.

Sampling uses the exponential-race trick: argmax(p / E) with E ~ Exp(1) draws from p. Rows with a seed
draw their noise from a generator seeded by (seed, output index), so a seeded request gives the same
tokens whatever else shares its batch.

Validation bounds every parameter before a request gets here; should a row's parameters still not make a
tensor, that row is sampled greedily and reported in `failed`, and the engine fails that request alone."""

from dataclasses import dataclass, field

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
    failed: dict[int, str] = field(default_factory=dict)  # row -> why its parameters could not be used


@dataclass(slots=True)
class Row:
    """One row's parameters as plain floats and ints that fit a tensor."""
    greedy: bool
    temperature: float = 1.0
    top_k: int = 0  # clamped to the vocabulary, so any count fits an int64
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None

    @property
    def filters(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0


def rows_of(params: list[SamplingParams], vocab: int) -> tuple[list[Row], dict[int, str]]:
    rows, failed = [], {}
    for i, p in enumerate(params):
        try:
            if p.greedy:
                rows.append(Row(True))
                continue
            seed = None if p.seed is None else int(p.seed) % (2**63)
            rows.append(Row(False, float(p.temperature), min(int(p.top_k), vocab), float(p.top_p), float(p.min_p),
                            seed))
        except (TypeError, ValueError, OverflowError) as e:
            rows.append(Row(True))
            failed[i] = f"sampling parameters unusable ({e})"
    return rows, failed


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


def _all_greedy(params: list[SamplingParams]) -> bool:
    try:
        return all(p.greedy for p in params)
    except (TypeError, ValueError, OverflowError):  # rows_of reports such a row as failed
        return False


@dataclass(slots=True)
class DeviceSample:
    """A step's sampled ids, and the logprobs its requests asked for, while the GPU may still be computing
    them: their kernels and one non-blocking copy to pinned host memory are queued, and `ready` is recorded
    after the copy, so reading them back waits for this step alone, not for a step queued after it."""
    sampled: torch.Tensor  # on the device: the next step queued ahead takes its input ids from it
    params: list[SamplingParams]
    failed: dict[int, str]
    host: list[torch.Tensor]  # sampled ids, then (when asked for) chosen logprobs, top values, top ids
    ready: torch.cuda.Event | None

    def to_host(self) -> SamplerOutput:
        """The one host transfer of a step (it waits for the GPU to finish this step)."""
        if self.ready is not None:
            self.ready.synchronize()
        rows = len(self.params)
        ids = self.host[0].tolist()
        if len(self.host) == 1:
            return SamplerOutput(ids, [None] * rows, self.failed)
        chosen, top_values, top_ids = (t.tolist() for t in self.host[1:])
        out = []
        for i, p in enumerate(self.params):
            if p.logprobs is None:
                out.append(None)
            else:
                out.append([(ids[i], chosen[i])] + list(zip(top_ids[i][: p.logprobs], top_values[i][: p.logprobs])))
        return SamplerOutput(ids, out, self.failed)


def _device_sample(logits: torch.Tensor, sampled: torch.Tensor, params: list[SamplingParams],
                   failed: dict[int, str]) -> DeviceSample:
    """Queues the logprobs' kernels too, when any request asked for logprobs, then the copy to the host."""
    outputs = [sampled]
    if any(p.logprobs is not None for p in params):
        logprobs = logits.log_softmax(dim=-1, dtype=torch.float32)
        top_n = max(p.logprobs for p in params if p.logprobs is not None)
        top_values, top_ids = logprobs.topk(min(max(top_n, 1), logits.shape[-1]), dim=-1)
        chosen = logprobs.gather(1, sampled.unsqueeze(1)).squeeze(1)
        outputs += [chosen, top_values, top_ids]
    if sampled.device.type != "cuda":
        return DeviceSample(sampled, params, failed, outputs, None)
    host = [t.to("cpu", non_blocking=True) for t in outputs]  # pinned, since the source is on CUDA
    ready = torch.cuda.Event()
    ready.record()
    return DeviceSample(sampled, params, failed, host, ready)


def sample(logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
    """logits: [rows, vocab], one row per sampling sequence, in the model's dtype (an argmax needs no cast:
    bfloat16 values are exact in float32, so both pick the same token)."""
    return sample_on_device(logits, batch).to_host()


def sample_on_device(logits: torch.Tensor, batch: SamplingBatch) -> DeviceSample:
    """Queues the sampling kernels; DeviceSample.to_host() waits for them."""
    device = logits.device
    if _all_greedy(batch.params):  # the common case, without building a Row per request
        return _device_sample(logits, logits.argmax(dim=-1), batch.params, {})
    rows, failed = rows_of(batch.params, logits.shape[-1])
    if all(r.greedy for r in rows):  # no softmax or noise over the vocabulary
        return _device_sample(logits, logits.argmax(dim=-1), batch.params, failed)
    greedy = torch.tensor([r.greedy for r in rows], device=device)
    temperature = torch.tensor([r.temperature for r in rows], device=device)
    scaled = logits / temperature.unsqueeze(1)  # float32, as temperature is: one kernel casts and divides
    if any(r.filters for r in rows if not r.greedy):
        top_k = torch.tensor([r.top_k for r in rows], device=device)
        top_p = torch.tensor([r.top_p for r in rows], device=device)
        min_p = torch.tensor([r.min_p for r in rows], device=device)
        scaled = _apply_top_k_top_p_min_p(scaled, top_k, top_p, min_p)
    probs = scaled.softmax(dim=-1)
    noise = torch.empty_like(probs).exponential_()
    for i, r in enumerate(rows):
        if r.seed is not None and not r.greedy:
            gen = torch.Generator(device=device)
            gen.manual_seed((r.seed * 1_000_003 + batch.output_lens[i]) % (2**63))
            noise[i].exponential_(generator=gen)
    sampled = torch.where(greedy, logits.argmax(dim=-1), (probs / noise).argmax(dim=-1))
    return _device_sample(logits, sampled, batch.params, failed)
