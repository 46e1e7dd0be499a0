"""Prefill: how the chunk size (max_num_batched_tokens) moves prefill throughput, and the Triton paged prefill
kernel against SDPA on contiguous tensors at the same shapes.

    PYTHONPATH=. python3 bench/prefill.py --model llama-3-8b --out bench/results/prefill-<device>-<date>.json

Chunks: one engine, built for the largest chunk, runs the same seeded prompts (max_tokens=1, so every step
is prefill) with its scheduler's token budget set to each chunk size in turn; each row has tokens/s, TFLOP/s
against the measured bf16 matmul peak, and the median step (the longest a decode waits behind a chunk).
Kernel (CUDA only): each case packs `seqs` sequences of `new` tokens after `cached` ones into a paged bf16
cache of randomly permuted blocks; the peer is PyTorch SDPA over the same K/V copied into contiguous tensors
(causal, bottom-right aligned when tokens are cached), checked against the kernel's output. Both timed with
CUDA events over repeated calls after warm-up.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import environment, seconds_per_call, write_json  # noqa: E402
from bench.step_breakdown import measure_matmul_tflops, prefill_flops  # noqa: E402
from service.engine.sampling_params import SamplingParams  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16  # Llama-3-8B's attention
KERNEL_CASES = [  # (seqs, new tokens each, cached tokens each)
    (1, 2048, 0), (4, 512, 0), (1, 8192, 0), (1, 2048, 6144), (8, 256, 1792)]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def chunk_row(engine, chunk: int, requests: int, prompt_len: int, seed: int = 3) -> dict:
    """Prefill of `requests` seeded prompts with the scheduler's token budget at `chunk`."""
    engine.scheduler.max_num_batched_tokens = chunk
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(10, engine.model_config.vocab_size, (requests, prompt_len), generator=gen).tolist()
    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"chunk{chunk}-{i}", prompt, params)
    steps = []
    _sync()
    start = time.perf_counter()
    while engine.has_unfinished():
        before = time.perf_counter()
        engine.step()
        _sync()
        steps.append(time.perf_counter() - before)
    seconds = time.perf_counter() - start
    model = engine.runner.model
    num_params = sum(p.numel() for p in model.parameters())
    embedding_params = engine.model_config.vocab_size * engine.model_config.hidden_size
    flops = prefill_flops(engine.model_config, num_params, embedding_params, prompt_len, requests)
    return {"chunk_tokens": chunk, "requests": requests, "prompt_tokens": prompt_len, "seconds": seconds,
            "steps": len(steps), "median_step_ms": statistics.median(steps) * 1000,
            "prefill_tokens_per_s": requests * prompt_len / seconds, "prefill_tflop_s": flops / seconds / 1e12}


def _time_ms(fn, repeats: int = 20) -> float:
    return seconds_per_call(lambda _: fn(), repeats) * 1000


def attention_flops(seqs: int, new: int, cached: int) -> float:
    """QK^T and PV of causal attention: each new token attends to the cached tokens and to itself and those
    before it."""
    pairs = seqs * (new * cached + new * (new + 1) / 2)
    return 2 * 2 * HEADS * HEAD_DIM * pairs


# --kernel-sweep: the launch settings tried on every case (the kernel's own default is timed beside them).
SWEEP = [dict(block_m=m, block_n=n, num_warps=w, num_stages=s)
         for m in (64, 128) for n in (32, 64, 128) for w in (4, 8) for s in (2, 3, 4)]


def kernel_row(seqs: int, new: int, cached: int, dtype=torch.bfloat16, sweep: list[dict] = ()) -> dict:
    from torch.nn.attention.bias import causal_lower_right

    from service.kernels.paged_prefill import paged_prefill_attention

    context = cached + new
    blocks = -(-context // BLOCK_SIZE)
    shape = (seqs * blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(shape, device="cuda", dtype=dtype)
    v_cache = torch.randn(shape, device="cuda", dtype=dtype)
    tables = torch.randperm(seqs * blocks, device="cuda").view(seqs, blocks).int()
    q = torch.randn(seqs * new, HEADS, HEAD_DIM, device="cuda", dtype=dtype)
    query_start_loc = torch.arange(0, seqs * new + 1, new, device="cuda", dtype=torch.int32)
    context_lens = torch.full((seqs,), context, device="cuda", dtype=torch.int32)
    out = torch.empty_like(q)
    scale = HEAD_DIM ** -0.5
    kernel_ms = _time_ms(lambda: paged_prefill_attention(q, k_cache, v_cache, tables, query_start_loc, context_lens,
                                                         new, scale, out=out))

    # The peer: the same K/V gathered into [seqs, kv_heads, context, head_dim], q as [seqs, heads, new, head_dim].
    k = k_cache[tables.long()].view(seqs, blocks * BLOCK_SIZE, KV_HEADS, HEAD_DIM)[:, :context].transpose(1, 2)
    v = v_cache[tables.long()].view(seqs, blocks * BLOCK_SIZE, KV_HEADS, HEAD_DIM)[:, :context].transpose(1, 2)
    k, v = k.repeat_interleave(HEADS // KV_HEADS, dim=1).contiguous(), v.repeat_interleave(HEADS // KV_HEADS, dim=1).contiguous()
    q4 = q.view(seqs, new, HEADS, HEAD_DIM).transpose(1, 2).contiguous()
    if cached:
        def sdpa():
            return F.scaled_dot_product_attention(q4, k, v, attn_mask=causal_lower_right(new, context), scale=scale)
    else:
        def sdpa():
            return F.scaled_dot_product_attention(q4, k, v, is_causal=True, scale=scale)
    peer = sdpa().transpose(1, 2).reshape(seqs * new, HEADS, HEAD_DIM)
    sdpa_ms = _time_ms(sdpa)
    flops = attention_flops(seqs, new, cached)
    row = {"seqs": seqs, "new_tokens": new, "cached_tokens": cached, "kernel_ms": kernel_ms,
           "kernel_tflop_s": flops / kernel_ms / 1e9, "sdpa_contiguous_ms": sdpa_ms,
           "sdpa_tflop_s": flops / sdpa_ms / 1e9, "kernel_over_sdpa": kernel_ms / sdpa_ms,
           "max_abs_diff_vs_sdpa": (peer.float() - out.float()).abs().max().item()}
    if sweep:
        row["sweep"] = [_sweep_point(launch, lambda **launch: paged_prefill_attention(
            q, k_cache, v_cache, tables, query_start_loc, context_lens, new, scale, out=out, **launch), peer, flops)
            for launch in sweep]
    return row


def _sweep_point(launch: dict, run, peer: torch.Tensor, flops: float) -> dict:
    """One launch setting: its time and error against SDPA, or why it did not run (a setting may need more
    shared memory or registers than an SM has)."""
    try:
        out = run(**launch)
        error = (peer.float() - out.float()).abs().max().item()
        ms = _time_ms(lambda: run(**launch))
    except Exception as e:  # noqa: BLE001 - Triton's resource errors have no common base class
        return dict(launch, error=f"{type(e).__name__}: {str(e)[:200]}")
    return dict(launch, ms=ms, tflop_s=flops / ms / 1e9, max_abs_diff_vs_sdpa=error)


def chunk_sizes(args, chunks: list[int], peak: float | None) -> list[dict]:
    from service.boot import build_engine
    from service.config import EngineConfig

    engine, _ = build_engine(EngineConfig(model=args.model, max_num_seqs=max(args.requests, 1),
                                          max_num_batched_tokens=chunks[-1], max_model_len=args.prompt_len + 8,
                                          plan_store="none"))
    rows = []
    for chunk in chunks:
        row = chunk_row(engine, chunk, args.requests, args.prompt_len)
        row["fraction_of_matmul_peak"] = row["prefill_tflop_s"] / peak if peak else None
        rows.append(row)
        print(f"chunk {chunk:>5}: {row['prefill_tokens_per_s']:>9,.0f} tok/s, {row['prefill_tflop_s']:6.1f} TFLOP/s,"
              f" median step {row['median_step_ms']:.1f} ms", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--chunks", default="512,1024,2048,4096,8192", help="max_num_batched_tokens values")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--no-kernel", action="store_true", help="skip the kernel-against-SDPA cases")
    ap.add_argument("--no-chunks", action="store_true", help="skip the chunk sizes (no engine is built)")
    ap.add_argument("--kernel-sweep", action="store_true", help="also time every launch setting of SWEEP")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    chunks = sorted(int(c) for c in args.chunks.split(","))
    peak = measure_matmul_tflops()
    chunk_rows = [] if args.no_chunks else chunk_sizes(args, chunks, peak)
    kernel_rows = []
    if torch.cuda.is_available() and not args.no_kernel:
        for case in KERNEL_CASES:
            row = kernel_row(*case, sweep=SWEEP if args.kernel_sweep else ())
            kernel_rows.append(row)
            print(f"kernel {case}: {row['kernel_ms']:.3f} ms vs SDPA {row['sdpa_contiguous_ms']:.3f} ms"
                  f" ({row['kernel_over_sdpa']:.2f}×), max diff {row['max_abs_diff_vs_sdpa']:.3g}", flush=True)
            timed = sorted((p for p in row.get("sweep", []) if "ms" in p), key=lambda p: p["ms"])
            for p in timed[:3]:
                print(f"  {p}", flush=True)
            torch.cuda.empty_cache()
    write_json(args.out, dict(environment(), benchmark="prefill", model=args.model, matmul_peak_tflop_s=peak,
                              chunks=chunk_rows, kernel=kernel_rows))


if __name__ == "__main__":
    main()
