"""The decode step's GEMMs one at a time: each projection as the model runs it (fused QKV and gate/up,
`F.linear` on a [out, in] weight), at the token counts of decode batches, in TFLOP/s and weight GB/s against
an 8192³ bf16 matmul timed in the same run. The sum over a step's projections (each layer's, plus the LM
head's) is what the GEMMs of one decode step would take one after another, to set beside the step breakdown.

Each timed call reads a different copy of the weight, from a ring of copies larger than the L2 cache, as each
layer reads its own. `--layouts linear,kn` also times `x @ w` on a [in, out] copy, which cuBLAS may serve with
other kernels, and `--blas cublas,cublaslt` times each through both of torch's cuBLAS paths. cuBLAS settings
that must be made before it starts (CUBLASLT_WORKSPACE_SIZE, in KiB) are read from the environment and
recorded: run once per setting.

    PYTHONPATH=. python3 bench/gemm_shapes.py --out bench/results/gemm-shapes.json [--tokens 1,64,128,256]
"""

import argparse
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.common import seconds_per_call
from service.model.config import ModelConfig
from service.model.loader import read_model_config

RING_BYTES = 512 << 20  # well beyond an H200's 60 MB of L2


@dataclass(frozen=True, slots=True)
class Projection:
    name: str
    in_features: int
    out_features: int
    per_step: int  # how many a decode step runs: one per layer, the LM head once


def projections(cfg: ModelConfig) -> list[Projection]:
    head_dim = cfg.head_dim
    q, kv = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
    layers = cfg.num_hidden_layers
    return [Projection("qkv_proj", cfg.hidden_size, q + 2 * kv, layers),
            Projection("o_proj", q, cfg.hidden_size, layers),
            Projection("gate_up_proj", cfg.hidden_size, 2 * cfg.intermediate_size, layers),
            Projection("down_proj", cfg.intermediate_size, cfg.hidden_size, layers),
            Projection("lm_head", cfg.hidden_size, cfg.vocab_size, 1)]


def time_projection(p: Projection, tokens: int, layout: str, blas: str, dtype, device, repeats: int) -> dict:
    weight_bytes = p.in_features * p.out_features * dtype.itemsize
    copies = max(2, min(64, -(-RING_BYTES // weight_bytes))) if device.type == "cuda" else 2
    shape = (p.out_features, p.in_features) if layout == "linear" else (p.in_features, p.out_features)
    weights = [torch.randn(shape, dtype=dtype, device=device) for _ in range(copies)]
    x = torch.randn(tokens, p.in_features, dtype=dtype, device=device)
    fn = (lambda w: F.linear(x, w)) if layout == "linear" else (lambda w: x @ w)
    # Each call reads the next weight of the ring.
    seconds = seconds_per_call(lambda i: fn(weights[i % len(weights)]), repeats, cuda=device.type == "cuda")
    del weights
    if device.type == "cuda":
        torch.cuda.empty_cache()
    flops = 2 * tokens * p.in_features * p.out_features
    return dict(projection=p.name, tokens=tokens, layout=layout, blas=blas, in_features=p.in_features,
                out_features=p.out_features, per_step=p.per_step, ms=seconds * 1e3, tflops=flops / seconds / 1e12,
                weight_gb_s=weight_bytes / seconds / 1e9)


def step_sums(rows: list[dict]) -> list[dict]:
    """Per token count, layout and BLAS library: the GEMM milliseconds of one decode step, projection by
    projection."""
    sums = {}
    for r in rows:
        key = (r["tokens"], r["layout"], r["blas"])
        sums.setdefault(key, 0.0)
        sums[key] += r["ms"] * r["per_step"]
    return [dict(tokens=t, layout=layout, blas=blas, gemm_ms_per_step=ms)
            for (t, layout, blas), ms in sorted(sums.items())]


def measure(model: str, tokens: list[int], layouts: list[str], dtype, device, repeats: int,
            blas_libraries: list[str] = ("cublas",)) -> dict:
    """blas_libraries: what torch.backends.cuda.preferred_blas_library is set to in turn (cublas: torch's
    default, cublasLt heuristics behind cublasGemmEx; cublaslt: torch calls cublasLtMatmul itself)."""
    cfg = read_model_config(model)
    rows = []
    for blas in blas_libraries:
        torch.backends.cuda.preferred_blas_library(blas)
        rows += [time_projection(p, t, layout, blas, dtype, device, repeats)
                 for t in tokens for p in projections(cfg) for layout in layouts]
    torch.backends.cuda.preferred_blas_library("cublas")
    return dict(model=model, dtype=str(dtype).removeprefix("torch."), rows=rows, per_step=step_sums(rows))


def main():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.common import environment, write_json
    from bench.step_breakdown import measure_matmul_tflops

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--tokens", default="1,64,128,256")
    ap.add_argument("--layouts", default="linear", help="linear (as the model runs), kn (x @ w on [in, out])")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--blas", default="cublas", help="comma-separated: cublas (torch's default), cublaslt")
    ap.add_argument("--reduced-precision-reduction", action=argparse.BooleanOptionalAction, default=None,
                    help="set torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction (kvmemo, like "
                         "every torch program, runs with torch's default: on)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.reduced_precision_reduction is not None:
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = args.reduced_precision_reduction
    result = measure(args.model, [int(t) for t in args.tokens.split(",")], args.layouts.split(","), dtype, device,
                     args.repeats, args.blas.split(","))
    result.update(environment(), matmul_peak_tflops=measure_matmul_tflops(),
                  cublaslt_workspace_kib=os.environ.get("CUBLASLT_WORKSPACE_SIZE"),
                  reduced_precision_reduction=torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction)
    for s in result["per_step"]:
        print(f"{s['tokens']:>5} tokens, {s['layout']}, {s['blas']}: {s['gemm_ms_per_step']:.3f} ms of GEMMs a step")
    write_json(args.out, {"benchmark": "gemm_shapes", **result})


if __name__ == "__main__":
    main()
