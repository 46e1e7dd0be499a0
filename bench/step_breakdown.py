"""Where a decode step goes, and how fast prefill runs: the PyTorch profiler over pure-decode steps of
`engine.step()`, its GPU kernels sorted into GEMMs, attention, the sampler, the rest (norms, rotary,
activation, adds, copies, index ops) and memory copies, and the host gap: the step's wall time that the GPU
spends idle. bench/throughput.py calls these on the engine it benchmarks."""

import cProfile
import pstats
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.common import seconds_per_call
from service.engine.sampling_params import SamplingParams

# Kernel names are the only label a kernel keeps inside a replayed CUDA graph, so categories go by name.
GEMM_MARKS = ("gemm", "cutlass", "nvjet", "xmma", "cublas", "splitk")
ATTENTION_MARKS = ("_split_kernel", "_reduce_kernel", "_prefill_kernel", "flash", "fmha", "attention")
SAMPLER_MARKS = ("argmax", "softmax", "sort", "topk", "scan", "distribution", "multinomial")
COPY_MARKS = ("memcpy", "memset")


def kernel_category(name: str) -> str:
    lowered = name.lower()
    if any(lowered.startswith(m) or m in lowered for m in COPY_MARKS):
        return "copies"
    if any(m in lowered for m in GEMM_MARKS):
        return "gemm"
    if any(lowered.startswith(m) or m in lowered for m in ATTENTION_MARKS):
        return "attention"
    if any(m in lowered for m in SAMPLER_MARKS):
        return "sampler"
    return "elementwise_other"


def busy_microseconds(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of [start, end) intervals: time the GPU ran at least one kernel."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def is_pure_decode(engine) -> bool:
    running = list(engine.scheduler.running)
    return bool(running) and not engine.scheduler.waiting and all(
        s.num_computed_tokens == s.num_tokens - 1 for s in running)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def decode_breakdown(engine, batch: int, prompt_len: int, context_steps: int = 28, steps: int = 10,
                     seed: int = 1) -> dict:
    """`batch` requests of `prompt_len` seeded tokens, decoded `context_steps` steps (context ≈ prompt_len +
    context_steps), then `steps` unprofiled steps timed one by one and `steps` profiled steps."""
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(10, engine.model_config.vocab_size, (batch, prompt_len), generator=gen).tolist()
    # The first prompts decode while the last ones prefill: room enough that none ends inside the windows.
    prefill_steps = -(-batch * prompt_len // engine.config.max_num_batched_tokens)
    params = SamplingParams(max_tokens=context_steps + 3 * steps + prefill_steps + 8, temperature=0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"breakdown-{batch}-{i}", prompt, params)
    while not is_pure_decode(engine):
        engine.step()
    for _ in range(context_steps):
        engine.step()
    context = sum(s.num_tokens for s in engine.scheduler.running) / batch
    # Steps back to back, one synchronize at the end: with async scheduling a step is queued before the
    # one in flight is read back, and a synchronize per step would take that overlap away.
    _sync()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    _sync()
    wall_ms = (time.perf_counter() - start) / steps * 1000
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    _sync()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        _sync()
        profiled_wall_ms = (time.perf_counter() - start) / steps * 1000
    running_after = len(engine.scheduler.running)
    host = cProfile.Profile()
    host.enable()
    for _ in range(steps):
        engine.step()
    _sync()
    host.disable()
    while engine.has_unfinished():
        engine.step()
    kernels = [e for e in prof.profiler.kineto_results.events() if e.device_type() == DeviceType.CUDA]
    per_category: dict[str, float] = {}
    per_kernel: dict[str, float] = {}
    intervals = []
    for k in kernels:
        us = k.duration_ns() / 1000
        per_category[kernel_category(k.name())] = per_category.get(kernel_category(k.name()), 0.0) + us
        per_kernel[k.name()] = per_kernel.get(k.name(), 0.0) + us
        intervals.append((k.start_ns() / 1000, k.start_ns() / 1000 + us))
    gpu_busy_ms = busy_microseconds(intervals) / 1000 / steps if kernels else None
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:12]
    return {
        "batch": batch, "running_after_windows": running_after, "mean_context_tokens": context, "steps": steps,
        "wall_step_ms": wall_ms,
        "gpu_busy_ms": gpu_busy_ms,
        "profiled_wall_step_ms": profiled_wall_ms,
        # The GPU's idle time in the profiled window (the profiler slows the host a little).
        "host_gap_ms": profiled_wall_ms - gpu_busy_ms if gpu_busy_ms is not None else None,
        "kernels_per_step": len(kernels) / steps,
        "category_ms": {c: us / 1000 / steps for c, us in sorted(per_category.items())},
        "top_kernels_ms": [{"name": name[:120], "ms": us / 1000 / steps} for name, us in top],
        "cuda_graphs": engine.runner.graphs is not None,
        "host_functions_ms": host_functions(host, steps),
    }


def host_functions(host: cProfile.Profile, steps: int, limit: int = 25) -> list[dict]:
    """The host's time per step in the functions that take most of it (cProfile's cumulative and own
    time), the part of a step the GPU may wait for."""
    stats = pstats.Stats(host)
    rows = []
    for (path, line, name), (_, calls, own, cumulative, _) in stats.stats.items():
        rows.append({"function": f"{'/'.join(path.rsplit('/', 2)[-2:])}:{line}:{name}",
                     "calls_per_step": calls / steps, "cumulative_ms": cumulative * 1000 / steps,
                     "own_ms": own * 1000 / steps})
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:limit]


def measure_matmul_tflops(n: int = 8192, repeats: int = 20) -> float | None:
    """bf16 n×n×n matmul throughput: the peak prefill is measured against."""
    if not torch.cuda.is_available():
        return None
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    seconds = seconds_per_call(lambda _: a @ b, repeats)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n ** 3 / seconds / 1e12


def prefill_flops(model_config, num_params: int, embedding_params: int, prompt_len: int, requests: int) -> float:
    """Matmul FLOPs of prefilling `requests` prompts: 2 per weight per token (the embedding lookup is no
    matmul, the LM head is computed for each prompt's last token only), plus causal attention's QK^T and PV."""
    tokens = prompt_len * requests
    lookup_tables = 1 if model_config.tie_word_embeddings else 2  # the embedding, and an untied LM head
    layer_params = num_params - lookup_tables * embedding_params
    dense = 2 * layer_params * tokens + 2 * embedding_params * requests
    attention_pairs = requests * prompt_len * (prompt_len + 1) / 2
    attention = 2 * 2 * model_config.num_hidden_layers * model_config.num_attention_heads \
        * model_config.head_dim * attention_pairs
    return dense + attention


def prefill_throughput(engine, requests: int, prompt_len: int, seed: int = 2) -> dict:
    """Seeded prompts with max_tokens=1: every step is prefill (chunks of max_num_batched_tokens)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(10, engine.model_config.vocab_size, (requests, prompt_len), generator=gen).tolist()
    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    _sync()
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(f"prefill-{i}", prompt, params)
    while engine.has_unfinished():
        engine.step()
    _sync()
    seconds = time.perf_counter() - start
    model = engine.runner.model
    num_params = sum(p.numel() for p in model.parameters())
    embedding_params = engine.model_config.vocab_size * engine.model_config.hidden_size
    flops = prefill_flops(engine.model_config, num_params, embedding_params, prompt_len, requests)
    return {"requests": requests, "prompt_tokens": prompt_len, "seconds": seconds,
            "prefill_tokens_per_s": requests * prompt_len / seconds, "prefill_tflop_s": flops / seconds / 1e12}


def main() -> None:
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.common import environment, write_json
    from service.boot import build_engine
    from service.config import EngineConfig

    ap = argparse.ArgumentParser(description="decode-step breakdown at batch 1 and 256 (prompts of 512 tokens)")
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    engine, _ = build_engine(EngineConfig(model=args.model, max_num_seqs=256, max_num_batched_tokens=8192,
                                          max_model_len=1024, plan_store="none"))
    rows = [decode_breakdown(engine, int(b), 512) for b in args.batches.split(",")]
    write_json(args.out, dict(environment(), benchmark="step_breakdown", model=args.model,
                              fused_kernels=engine.runner.use_fused_kernels,
                              async_scheduling=engine.config.async_scheduling, rows=rows))


if __name__ == "__main__":
    main()
