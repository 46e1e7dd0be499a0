"""Profiling: the peak activation of the steps serving runs (the worst mixed step, the token budget as
max_model_len-long prompts, a pure decode step, each sampling every row the most expensive way), run back to
back so that the allocator's fragmentation across them counts; memory outside the allocator; and the CUDA-graph
pool, measured by capturing the real decode graphs against a minimal KV cache whose block tables have their
full width."""

import gc
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from service.config import EngineConfig
from service.engine.kv_layout import KVLayout
from service.memory import snapshot
from service.memory.host import process_rss, release_free_heap, reset_peak_rss
from service.memory.memory_profile import Components, MiB, format_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DummyStep:
    """One dummy step for ModelRunner.dummy_run: whole prompts of prefill_lens tokens beside `decodes`
    sequences that decode one token each."""
    prefill_lens: tuple[int, ...]
    decodes: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(self.prefill_lens) + self.decodes

    @property
    def num_seqs(self) -> int:
        return len(self.prefill_lens) + self.decodes

    def num_blocks(self, layout: KVLayout) -> int:
        """KV blocks the step takes, plus the reserved one: the decodes share one max_model_len table
        (ModelRunner.dummy_run)."""
        return layout.blocks_for(list(self.prefill_lens)) + (layout.max_blocks_per_seq if self.decodes else 0)

    def describe(self) -> str:
        parts = [f"{len(self.prefill_lens)} prefills of up to {max(self.prefill_lens)} tokens"] if self.prefill_lens else []
        return " + ".join(parts + ([f"{self.decodes} decodes"] if self.decodes else []))

    def run(self, runner) -> None:
        runner.dummy_run(list(self.prefill_lens), self.decodes)


def long_prompt_lens(max_num_batched_tokens: int, max_model_len: int) -> list[int]:
    """The same token budget as sequences of the longest length, whose attention temporaries are largest."""
    longest = max_model_len - 1
    return [longest] * (max_num_batched_tokens // longest) + ([max_num_batched_tokens % longest] if max_num_batched_tokens % longest else [])


def mixed_step(max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int) -> DummyStep:
    """The worst step a busy server runs: every seat but the prefills' decoding, and the rest of the token
    budget as the largest prefill chunks (max_model_len - 1 tokens at most each), so that the step has the
    whole budget in tokens and max_num_seqs sampling rows."""
    longest = max(1, max_model_len - 1)
    num_prefills = 1
    while True:
        decodes = max(0, min(max_num_seqs - num_prefills, max_num_batched_tokens - num_prefills))
        prefill = max_num_batched_tokens - decodes
        if prefill <= num_prefills * longest or num_prefills >= max_num_seqs:
            break
        num_prefills += 1
    lens = [min(longest, prefill - i * longest) for i in range(num_prefills) if prefill - i * longest > 0]
    return DummyStep(tuple(lens), decodes)


def serving_steps(max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int) -> list[DummyStep]:
    """The steps profiling runs back to back: the worst mixed step (warm-up replays it); the budget as
    max_model_len-long prompts (the largest attention temporaries); and a pure decode step of max_num_seqs rows
    (an eager one's logits lie where its forward left them; a CUDA graph's in its own pool). Not the mixed step
    again: a step frees everything it allocated, and freed neighbours merge, so the next step finds the same
    free blocks whatever ran before."""
    mixed = mixed_step(max_num_batched_tokens, max_num_seqs, max_model_len)
    long = DummyStep(tuple(long_prompt_lens(max_num_batched_tokens, max_model_len)))
    decode = DummyStep((), min(max_num_seqs, max_num_batched_tokens))
    return [mixed, long, decode]


def fitted(step: DummyStep, layout: KVLayout, num_blocks: int) -> DummyStep:
    """As much of step as a KV cache of num_blocks holds: its prefills first (the last one cut short), then
    its decodes while a block is left for their shared table (which dummy_run narrows to what is free). The
    smallest cache holds one max_model_len sequence, so a step always keeps one prefill."""
    free = num_blocks - 1  # the reserved null block
    lens = []
    for n in step.prefill_lens:
        n = min(n, free * layout.block_size)
        if n <= 0:
            break
        lens.append(n)
        free -= -(-n // layout.block_size)
    return DummyStep(tuple(lens), step.decodes if free >= -(-2 // layout.block_size) else 0)


CONSTRAINED_STEP_BYTES = 256 * MiB
CONSTRAINED_MAX_STEPS = 8


def measure_activation_peak(runner, max_num_batched_tokens: int) -> int:
    """The peak of the serving steps run back to back over one KV cache, in allocated or reserved bytes
    (whichever is larger). On CUDA the peak is then checked the way serving will use it, with only that much
    memory free; on a CPU only the mixed step runs."""
    layout = runner.layout
    steps = serving_steps(max_num_batched_tokens, layout.max_num_seqs, layout.max_model_len)
    if runner.device.type != "cuda":
        # Host memory has no caching allocator whose fragmentation one step leaves for the next: the worst mixed
        # step alone gives the peak (each step of the whole token budget takes seconds on a CPU), and the other
        # steps count through the floor of what their tensors provably hold.
        floor = max(activation_floor_bytes(runner.model_config, layout, s.num_tokens) for s in steps)
        return max(measure_steps_peak(runner, steps[:1]), floor)
    peak = measure_steps_peak(runner, steps)
    start = time.perf_counter()
    with_prefills = [s for s in steps if s.prefill_lens]  # the decode step is the smallest
    budget = constrained_activation_peak(runner, with_prefills, peak)
    log.info("constrained check of %d steps: %.2f s", len(with_prefills), time.perf_counter() - start)
    return budget


def constrained_activation_peak(runner, steps, peak: int) -> int:
    """The smallest free memory, from the unconstrained peak up in CONSTRAINED_STEP_BYTES steps, in which the
    dummy steps run one after another. With memory to spare the allocator never has to fit a request into the
    free space of partly used segments; beside a full-size KV cache it does, and fragmentation can make it need
    more (an H200 Llama-3-8B boot ran out of memory with 1.1 GiB free inside segments, 376 MiB short)."""
    for step in range(CONSTRAINED_MAX_STEPS):
        budget = peak + step * CONSTRAINED_STEP_BYTES
        if runs_within(runner, steps, budget):
            if step:
                log.info("peak activation: %s with memory to spare, %s with only that much free",
                         format_bytes(peak), format_bytes(budget))
            return budget
    budget += CONSTRAINED_STEP_BYTES
    log.warning("the dummy steps still ran out of memory with %s free; using %s as the activation peak",
                format_bytes(budget - CONSTRAINED_STEP_BYTES), format_bytes(budget))
    return budget


def runs_within(runner, steps: list[DummyStep], budget: int) -> bool:
    """Whether the dummy steps run back to back when the caching allocator may take only `budget` bytes more
    than it holds: as if only that much device memory were free, which is what serving beside a full-size KV
    cache leaves. The allocator's own limit does it (set_per_process_memory_fraction), so nothing is allocated
    to hold the rest: a ballast tensor of the free memory took 0.7 s to map and unmap on an H200."""
    runner.allocate_kv_cache(max(s.num_blocks(runner.layout) for s in steps))
    try:
        with allocator_limited_to(runner.device, budget):
            return all(step_runs(runner, s) for s in steps)
    finally:
        runner.free_kv_cache()
        gc.collect()
        torch.cuda.empty_cache()


@contextmanager
def allocator_limited_to(device: torch.device, budget: int):
    """The caching allocator refuses (and raises OutOfMemoryError) what would take its reserved memory more than
    `budget` bytes, or the memory free now, above where it stands after releasing its cache."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(index)
    limit = torch.cuda.memory_reserved(index) + min(budget, free)
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), index)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)


def step_runs(runner, step: DummyStep) -> bool:
    try:
        step.run(runner)
        torch.cuda.synchronize()
        return True
    except torch.OutOfMemoryError:
        return False


def activation_floor_bytes(model_config, layout: KVLayout, num_tokens: int) -> int:
    """A lower bound on a dummy step's peak: the tensors that are alive together in the MLP of one layer
    (the residual stream, gate_up's output and silu(gate) * up), or in the sampler (the float32 logits of
    max_num_seqs rows, their sorted copy and its int64 indices), whichever is larger."""
    cfg = model_config
    element = torch.tensor([], dtype=layout.dtype).element_size()
    mlp = num_tokens * (cfg.hidden_size + 3 * cfg.intermediate_size) * element
    sampler = layout.max_num_seqs * cfg.vocab_size * (4 + 4 + 8)
    return max(mlp, sampler)


def measure_steps_peak(runner, steps: list[DummyStep]) -> int:
    """The peak above the starting point of `steps` run one after another over one KV cache, with nothing
    released between them: serving never empties the allocator's cache, so a step meets the free blocks the
    steps before it left, and what they fragment counts as it will while serving."""
    runner.allocate_kv_cache(max(s.num_blocks(runner.layout) for s in steps))
    try:
        if runner.device.type == "cuda":
            # The larger of the allocated and the reserved peak: reserved counts the allocator's rounding and
            # fragmentation, but stays flat when small activations fit in the free space of existing segments.
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
            torch.cuda.reset_peak_memory_stats()
            passes = []
            for step in steps:
                start = time.perf_counter()
                step.run(runner)
                torch.cuda.synchronize()
                passes.append(f"{step.describe()}: {time.perf_counter() - start:.2f} s, peak so far "
                              f"{format_bytes(torch.cuda.max_memory_allocated() - allocated)} allocated, "
                              f"{format_bytes(torch.cuda.max_memory_reserved() - reserved)} reserved")
            log.info("activation steps: %s", "; ".join(passes))
            return max(torch.cuda.max_memory_allocated() - allocated, torch.cuda.max_memory_reserved() - reserved)
        gc.collect()
        release_free_heap()
        before, _ = process_rss()
        reset_peak_rss()
        for step in steps:
            step.run(runner)
        _, peak = process_rss()
        # RSS grows by less than the steps need when their tensors land in heap pages freed earlier (on a
        # loaded 2-core machine it read 0): never below what a step's tensors provably hold at once.
        floor = max(activation_floor_bytes(runner.model_config, runner.layout, s.num_tokens) for s in steps)
        return max(peak - before, floor)
    finally:
        runner.free_kv_cache()
        if runner.device.type == "cuda":
            torch.cuda.empty_cache()


def measure_cudagraph(runner, sizes: list[int]) -> int:
    """Device bytes that capturing every decode graph takes (pool and graph objects), then released."""
    if not runner.uses_graphs:
        return 0
    runner.allocate_kv_cache(2)
    try:
        torch.cuda.empty_cache()
        before = snapshot.take(runner.device).free
        runner.capture_graphs(sizes)
        after = snapshot.take(runner.device).free
        return max(0, before - after)
    finally:
        runner.free_kv_cache()
        gc.collect()
        torch.cuda.empty_cache()


def profile(runner, config: EngineConfig, baseline: snapshot.Snapshot, weights: int) -> tuple[Components, float]:
    """runner: a ModelRunner without a KV cache; each pass allocates its own through the runner and frees it."""
    start = time.perf_counter()
    activation = measure_activation_peak(runner, config.max_num_batched_tokens)
    non_torch = max(0, snapshot.take(runner.device).non_torch - baseline.non_torch) if runner.device.type == "cuda" else 0
    graphs_start = time.perf_counter()
    cudagraph = measure_cudagraph(runner, config.cuda_graph_sizes)
    end = time.perf_counter()
    log.info("profiling took %.2f s: activation passes %.2f s, CUDA-graph pass %.2f s",
             end - start, graphs_start - start, end - graphs_start)
    return Components(weights, activation, non_torch, cudagraph), end - start
