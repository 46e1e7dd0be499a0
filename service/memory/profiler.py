"""Profiling: peak activation from a dummy batch of max_num_batched_tokens plus a sampler pass over
max_num_seqs rows; memory outside the allocator; and the CUDA-graph pool, measured by capturing the real
decode graphs against a minimal KV cache whose block tables have their full width."""

import gc
import logging
import time

import torch

from service.config import EngineConfig
from service.engine.kv_layout import KVLayout
from service.memory import snapshot
from service.memory.host import process_rss, reset_peak_rss
from service.memory.memory_profile import Components, MiB, format_bytes

log = logging.getLogger(__name__)


def dummy_prompt_lens(max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int) -> list[int]:
    """max_num_batched_tokens split as evenly as possible over min(that, max_num_seqs) requests."""
    n = min(max_num_batched_tokens, max_num_seqs)
    lens = [max_num_batched_tokens // n + (1 if i < max_num_batched_tokens % n else 0) for i in range(n)]
    return [min(length, max_model_len - 1) for length in lens]


def long_prompt_lens(max_num_batched_tokens: int, max_model_len: int) -> list[int]:
    """The same token budget as sequences of the longest length, whose attention temporaries are largest."""
    longest = max_model_len - 1
    return [longest] * (max_num_batched_tokens // longest) + ([max_num_batched_tokens % longest] if max_num_batched_tokens % longest else [])


CONSTRAINED_STEP_BYTES = 256 * MiB
CONSTRAINED_MAX_STEPS = 8


def measure_activation_peak(runner, max_num_batched_tokens: int) -> int:
    """The larger peak of two dummy batches of max_num_batched_tokens: split over up to max_num_seqs requests
    (the batch shape vLLM profiles), and as max_model_len-long sequences (the largest attention temporaries).
    On CUDA the peak is then checked the way serving will use it, with only that much memory free."""
    layout = runner.layout
    batches = (dummy_prompt_lens(max_num_batched_tokens, layout.max_num_seqs, layout.max_model_len),
               long_prompt_lens(max_num_batched_tokens, layout.max_model_len))
    peaks, seconds = [], []
    for lens in batches:
        start = time.perf_counter()
        peaks.append(measure_batch_peak(runner, lens))
        seconds.append(time.perf_counter() - start)
    if runner.device.type != "cuda":
        return max(peaks)
    start = time.perf_counter()
    budget = constrained_activation_peak(runner, batches, max(peaks))
    log.info("activation passes: %s; constrained check %.2f s", "; ".join(
        f"{len(lens)} sequences of up to {max(lens)} tokens: peak {format_bytes(p)} in {t:.2f} s"
        for lens, p, t in zip(batches, peaks, seconds)), time.perf_counter() - start)
    return budget


def constrained_activation_peak(runner, batches, peak: int) -> int:
    """The smallest free memory, from the unconstrained peak up in CONSTRAINED_STEP_BYTES steps, in which every
    dummy batch runs. With memory to spare the allocator never has to fit a request into the free space of
    partly used segments; beside a full-size KV cache it does, and fragmentation can make it need more (an
    H200 Llama-3-8B boot ran out of memory with 1.1 GiB free inside segments, 376 MiB short)."""
    for step in range(CONSTRAINED_MAX_STEPS):
        budget = peak + step * CONSTRAINED_STEP_BYTES
        if all(runs_within(runner, lens, budget) for lens in batches):
            if step:
                log.info("peak activation: %s with memory to spare, %s with only that much free",
                         format_bytes(peak), format_bytes(budget))
            return budget
    budget += CONSTRAINED_STEP_BYTES
    log.warning("the dummy batches still ran out of memory with %s free; using %s as the activation peak",
                format_bytes(budget - CONSTRAINED_STEP_BYTES), format_bytes(budget))
    return budget


def runs_within(runner, lens: list[int], budget: int) -> bool:
    """Whether the dummy batch runs when a ballast tensor leaves only `budget` bytes of device memory free."""
    runner.allocate_kv_cache(runner.layout.blocks_for(lens))
    ballast = None
    try:
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(runner.device)
        if free > budget:
            try:
                ballast = torch.empty(free - budget, dtype=torch.uint8, device=runner.device)
            except torch.OutOfMemoryError:
                log.warning("could not take %s of free device memory to check the activation peak; using the "
                            "peak measured with memory to spare", format_bytes(free - budget))
                return True
        return batch_runs(runner, lens)
    finally:
        del ballast
        runner.free_kv_cache()
        gc.collect()
        torch.cuda.empty_cache()


def batch_runs(runner, lens: list[int]) -> bool:
    try:
        runner.dummy_run(lens)
        torch.cuda.synchronize()
        return True
    except torch.OutOfMemoryError:
        return False


def activation_floor_bytes(model_config, layout: KVLayout, lens: list[int]) -> int:
    """A lower bound on the dummy batch's peak: the tensors that are alive together in the MLP of one layer
    (the residual stream, gate_up's output and silu(gate) * up), or in the sampler (the float32 logits of
    max_num_seqs rows, their sorted copy and its int64 indices), whichever is larger."""
    cfg = model_config
    tokens = sum(lens)
    element = torch.tensor([], dtype=layout.dtype).element_size()
    mlp = tokens * (cfg.hidden_size + 3 * cfg.intermediate_size) * element
    sampler = layout.max_num_seqs * cfg.vocab_size * (4 + 4 + 8)
    return max(mlp, sampler)


def measure_batch_peak(runner, lens: list[int]) -> int:
    runner.allocate_kv_cache(runner.layout.blocks_for(lens))
    try:
        if runner.device.type == "cuda":
            # The larger of the allocated and the reserved peak: reserved counts the allocator's rounding and
            # fragmentation, but stays flat when small activations fit in the free space of existing segments.
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
            torch.cuda.reset_peak_memory_stats()
            runner.dummy_run(lens)
            torch.cuda.synchronize()
            return max(torch.cuda.max_memory_allocated() - allocated, torch.cuda.max_memory_reserved() - reserved)
        gc.collect()
        before, _ = process_rss()
        reset_peak_rss()
        runner.dummy_run(lens)
        _, peak = process_rss()
        # RSS grows by less than the batch needs when its tensors land in heap pages freed earlier (on a loaded
        # 2-core machine it read 0): never below what the batch's tensors provably hold at once.
        return max(peak - before, activation_floor_bytes(runner.model_config, runner.layout, lens))
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
