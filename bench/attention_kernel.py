"""Paged decode-attention kernel: time and achieved memory bandwidth at Llama-3-8B shapes (GPU only).

    PYTHONPATH=. python3 bench/attention_kernel.py --out bench/results/attention-kernel-<device>.json

Each case fills a bf16 cache with randomly permuted blocks, times the kernel with
triton.testing.do_bench (L2 flushed between calls, as when each layer reads its own cache) and counts
bytes as K/V read plus q read plus out written. The table width is the context (exact) or
--max-model-len (padded, the way CUDA-graph batches are laid out). The peer is torch SDPA over the
same K/V copied into contiguous tensors, checked against the kernel's output.
"""

import argparse
import math

import torch
import torch.nn.functional as F
import triton
import triton.testing

from bench.common import environment, write_json
from service.kernels.paged_attention import _split_plan, paged_decode_attention

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE, DTYPE = 32, 8, 128, 16, torch.bfloat16
DEVICE = "cuda"
SPEC_BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "H100": 3.35e12, "A100": 2.0e12}
SWEEP = [dict(tile_n=t, num_warps=w, num_stages=s) for t in (32, 64, 128) for w in (4, 8) for s in (2, 3, 4)]


def peak_bandwidth() -> float:
    """Bytes/s of the device's memory: from NVML's memory clock and bus width, else the spec sheet."""
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        clock_hz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM) * 1e6
        return 2 * clock_hz * pynvml.nvmlDeviceGetMemoryBusWidth(handle) / 8  # double data rate
    except Exception:
        name = torch.cuda.get_device_name()
        return next((bw for key, bw in SPEC_BANDWIDTH.items() if key in name), float("nan"))


def time_us(fn) -> float:
    result = triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=[0.5])
    return (result[0] if isinstance(result, (list, tuple)) else result) * 1e3  # Triton 3.6 returns a float


def run_case(batch, context, table_blocks, peak, sweep):
    blocks = context // BLOCK_SIZE
    shape = (batch * blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(shape, device=DEVICE, dtype=DTYPE)
    v_cache = torch.randn(shape, device=DEVICE, dtype=DTYPE)
    tables = torch.zeros(batch, table_blocks, device=DEVICE, dtype=torch.int32)
    tables[:, :blocks] = torch.randperm(batch * blocks, device=DEVICE).view(batch, blocks).int()
    lens = torch.full((batch,), context, device=DEVICE, dtype=torch.int32)
    q = torch.randn(batch, HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    out = torch.empty_like(q)
    scale = HEAD_DIM ** -0.5
    size = DTYPE.itemsize
    nbytes = 2 * batch * context * KV_HEADS * HEAD_DIM * size + 2 * q.numel() * size

    def gbps(us):
        return nbytes / (us * 1e-6) / 1e9

    us = time_us(lambda: paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, out=out))
    splits, _ = _split_plan(batch, KV_HEADS, table_blocks * BLOCK_SIZE, 64, q.device)  # 64: default tile at d128
    row = dict(batch=batch, context=context, table_blocks=table_blocks, num_splits=splits, bytes=nbytes,
               kernel_us=round(us, 2), kernel_gbps=round(gbps(us), 1),
               fraction_of_peak=round(nbytes / (us * 1e-6) / peak, 3))

    # Peer and correctness: SDPA over the same K/V laid out contiguously.
    order = tables[:, :blocks].long()
    k = k_cache[order].view(batch, context, KV_HEADS, HEAD_DIM).transpose(1, 2).contiguous()
    v = v_cache[order].view(batch, context, KV_HEADS, HEAD_DIM).transpose(1, 2).contiguous()
    q4 = q.unsqueeze(2)
    try:
        peer = F.scaled_dot_product_attention(q4, k, v, scale=scale, enable_gqa=True).squeeze(2)
        row["max_abs_diff_vs_sdpa"] = (peer.float() - out.float()).abs().max().item()
        peer_us = time_us(lambda: F.scaled_dot_product_attention(q4, k, v, scale=scale, enable_gqa=True))
        row.update(sdpa_contiguous_us=round(peer_us, 2), sdpa_contiguous_gbps=round(gbps(peer_us), 1))
    except (RuntimeError, TypeError) as e:  # enable_gqa needs torch >= 2.5
        row["sdpa_error"] = str(e)[:200]
    del k, v

    if sweep:
        trials = [dict(c) for c in SWEEP] + [dict(num_splits=max(1, splits * f // 4)) for f in (2, 8, 16)]
        results = []
        for cfg in trials:
            try:
                t = time_us(lambda: paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, out=out, **cfg))
                results.append(dict(cfg, kernel_us=round(t, 2), kernel_gbps=round(gbps(t), 1)))
            except Exception as e:  # e.g. a tile and stage count that overflow shared memory
                results.append(dict(cfg, error=f"{type(e).__name__}: {str(e)[:200]}"))
        timed = [r for r in results if "kernel_us" in r]
        row["sweep_best"] = min(timed, key=lambda r: r["kernel_us"]) if timed else None
        row["sweep"] = results
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where to write the JSON results")
    parser.add_argument("--batch-sizes", default="1,8,64,256")
    parser.add_argument("--contexts", default="1024,4096")
    parser.add_argument("--max-model-len", type=int, default=8192, help="width of the padded block tables")
    parser.add_argument("--sweep", action="store_true", help="also try tile/warp/stage/split variants")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/attention_kernel.py needs a CUDA device; none is visible")

    peak = peak_bandwidth()
    device = torch.cuda.get_device_name()
    print(f"{device}: peak {peak / 1e9:.0f} GB/s; torch {torch.__version__}, triton {triton.__version__}")
    print(f"{'batch':>5} {'ctx':>5} {'table':>6} {'splits':>6} {'us':>9} {'GB/s':>7} {'peak':>5}"
          f" {'sdpa us':>9} {'sdpa GB/s':>9}")
    rows = []
    for context in map(int, args.contexts.split(",")):
        for batch in map(int, args.batch_sizes.split(",")):
            widths = sorted({context // BLOCK_SIZE, max(context, args.max_model_len) // BLOCK_SIZE})
            for table_blocks in widths:
                row = run_case(batch, context, table_blocks, peak, args.sweep)
                rows.append(row)
                print(f"{batch:>5} {context:>5} {table_blocks:>6} {row['num_splits']:>6} {row['kernel_us']:>9.1f}"
                      f" {row['kernel_gbps']:>7.0f} {row['fraction_of_peak']:>5.0%}"
                      f" {row.get('sdpa_contiguous_us', math.nan):>9.1f}"
                      f" {row.get('sdpa_contiguous_gbps', math.nan):>9.0f}"
                      + (f"   best {row['sweep_best']}" if args.sweep else ""), flush=True)
                torch.cuda.empty_cache()
    write_json(args.out, dict(environment(), benchmark="attention_kernel", peak_bytes_per_s=peak, heads=HEADS,
                              kv_heads=KV_HEADS, head_dim=HEAD_DIM, block_size=BLOCK_SIZE, dtype=str(DTYPE),
                              cases=rows))


if __name__ == "__main__":
    main()
