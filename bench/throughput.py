"""Offline throughput of the engine on seeded random prompts with ignore_eos, against its peers on the same
workloads, each run in a subprocess of the same run before the engine starts, so that they never share the
GPU: Hugging Face transformers' continuous batching (`generate_batch`, bench/hf_peer.py) on A and B, and
gpt-fast (bench/gptfast_peer.py, from the git-ignored .peers/gpt-fast) on B.

    PYTHONPATH=. python3 bench/throughput.py --model llama-3-8b --peer both --out bench/results/throughput.json

Workload A: 256 requests x 512 prompt / 256 output tokens. Workload B: batch 1, 128 prompt / 512 output.
`--no-fused-kernels` runs the engine without the fused elementwise Triton kernels (EngineConfig.fused_kernels).
"""

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import environment, measure_copy_bandwidth_gb_s, write_json  # noqa: E402
from bench.step_breakdown import decode_breakdown, measure_matmul_tflops, prefill_throughput  # noqa: E402
from service.boot import build_engine  # noqa: E402
from service.config import EngineConfig  # noqa: E402
from service.engine.sampling_params import SamplingParams  # noqa: E402

WORKLOADS = {"A": dict(requests=256, prompt=512, output=256), "B": dict(requests=1, prompt=128, output=512)}


def prompts_for(workload: dict, vocab_size: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab_size, (workload["requests"], workload["prompt"]), generator=gen).tolist()


def run_workload(engine, workload: dict) -> dict:
    prompts = prompts_for(workload, engine.model_config.vocab_size)
    params = SamplingParams(max_tokens=workload["output"], temperature=0, ignore_eos=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params)
    output_tokens, decode_steps, decode_context = 0, [], []
    while engine.has_unfinished():
        running = list(engine.scheduler.running)
        pure_decode = running and not engine.scheduler.waiting and all(
            s.num_computed_tokens == s.num_tokens - 1 for s in running)
        context = sum(s.num_tokens for s in running)
        t = time.perf_counter()
        outputs = engine.step()
        if pure_decode:
            decode_steps.append(time.perf_counter() - t)
            decode_context.append(context)
        output_tokens += sum(len(o.new_token_ids) for o in outputs)
    seconds = time.perf_counter() - start
    step = sorted(decode_steps)[len(decode_steps) // 2] if decode_steps else None
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.runner.model.parameters())
    kv_per_token = engine.runner.layout.bytes_per_block // engine.runner.layout.block_size
    mean_context = sum(decode_context) / len(decode_context) if decode_context else 0
    bytes_per_step = weight_bytes + mean_context * kv_per_token
    return {
        "requests": workload["requests"], "prompt_tokens": workload["prompt"], "output_tokens_each": workload["output"],
        "output_tokens": output_tokens, "seconds": seconds, "output_tokens_per_s": output_tokens / seconds,
        "decode_step_ms": step * 1000 if step else None,
        "achieved_gb_s": bytes_per_step / step / 1e9 if step else None,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
    }


PEERS = ("transformers", "gpt-fast", "both", "none")


def run_peer_script(script: str, args: list[str], timeout: int, label: str) -> dict:
    """One peer's JSON, or {"error": ...}. The peer gets a session of its own, so that a timeout ends its
    compile workers too."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, str(Path(__file__).parent / script), *args, "--out", f.name]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # it may have ended since
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"error": f"{label} peer did not finish within {timeout} s"}
        if proc.returncode != 0:
            return {"error": stderr[-2000:]}
        return json.loads(Path(f.name).read_text())


def run_peer(model: str, workload_name: str, timeout: int) -> dict:
    return run_peer_script("hf_peer.py", ["--model", model, "--workload", workload_name], timeout, "transformers")


def run_gpt_fast(model: str, timeout: int, peer_dir: Path, extra: list[str] = ()) -> dict:
    if not (peer_dir / "model.py").is_file():
        return {"error": f"gpt-fast is not fetched into {peer_dir} (see bench/gptfast_peer.py)"}
    return run_peer_script("gptfast_peer.py", ["--model", model, "--workload", "B", "--peer-dir", str(peer_dir),
                                               *extra], timeout, "gpt-fast")


def with_gpt_fast(row: dict, peer: dict) -> dict:
    tokens_per_s = peer.get("output_tokens_per_s")
    return dict(row, gpt_fast_peer=peer, gpt_fast_output_tokens_per_s=tokens_per_s,
                vs_gpt_fast=row["output_tokens_per_s"] / tokens_per_s if tokens_per_s else None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--workloads", default="A,B")
    ap.add_argument("--peer", choices=PEERS, default="both",
                    help="transformers on every workload, gpt-fast on B; `both` runs the two")
    ap.add_argument("--no-peer", dest="peer", action="store_const", const="none", help="the same as --peer none")
    ap.add_argument("--peer-timeout", type=int, default=240, help="seconds for the transformers peer, per workload")
    ap.add_argument("--gpt-fast-timeout", type=int, default=360, help="seconds for the gpt-fast peer, compile included")
    ap.add_argument("--gpt-fast-dir", type=Path, default=Path(__file__).resolve().parent.parent / ".peers" / "gpt-fast")
    ap.add_argument("--gpt-fast-args", default="", help="extra arguments for bench/gptfast_peer.py (CPU smoke runs)")
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the workloads (CPU smoke runs)")
    ap.add_argument("--fused-kernels", action=argparse.BooleanOptionalAction, default=True,
                    help="fused residual add + RMSNorm, rotary + KV write and SiLU x mul kernels (CUDA only)")
    ap.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True,
                    help="profile decode steps at batch 1 and 256 and time prefill alone")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    env = environment()
    names = args.workloads.split(",")
    # The peers run first, each in its own process, so that a peer and the engine never hold GPU memory at once.
    not_run = {"error": "not run"}
    peers = {n: run_peer(args.model, n, args.peer_timeout) if args.peer in ("transformers", "both") else not_run
             for n in names}
    gpt_fast = not_run
    if "B" in names and args.peer in ("gpt-fast", "both"):
        gpt_fast = run_gpt_fast(args.model, args.gpt_fast_timeout, args.gpt_fast_dir, args.gpt_fast_args.split())
    for name, peer in peers.items():
        print(name, "transformers peer:", json.dumps(peer)[:1000], flush=True)
    print("B gpt-fast peer:", json.dumps(gpt_fast)[:1000], flush=True)
    bandwidth = measure_copy_bandwidth_gb_s()
    config = EngineConfig(model=args.model, max_num_seqs=256, max_num_batched_tokens=args.max_num_batched_tokens,
                          max_model_len=1024, plan_store="none", fused_kernels=args.fused_kernels)
    engine, boot = build_engine(config)
    rows = []
    for name in names:
        workload = {k: max(1, int(v * args.scale)) for k, v in WORKLOADS[name].items()}
        run_workload(engine, dict(workload, requests=min(workload["requests"], 4), output=8))  # warm-up
        row = dict(env, model=args.model, workload=name, cuda_graphs=engine.runner.graphs is not None,
                   fused_kernels=engine.runner.use_fused_kernels,
                   device_bandwidth_gb_s=bandwidth, **run_workload(engine, workload))
        if name == "B" and engine.runner.graphs is not None:
            graphs, engine.runner.graphs = engine.runner.graphs, None
            eager = run_workload(engine, workload)
            engine.runner.graphs = graphs
            row["eager_output_tokens_per_s"] = eager["output_tokens_per_s"]
            row["eager_decode_step_ms"] = eager["decode_step_ms"]
            row["graph_speedup"] = row["output_tokens_per_s"] / eager["output_tokens_per_s"]
        row["peer"] = peers[name]
        row["peer_output_tokens_per_s"] = peers[name].get("output_tokens_per_s")
        if name == "B":
            row = with_gpt_fast(row, gpt_fast)
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    extra = {}
    if args.breakdown:
        prompt = max(1, int(512 * args.scale))
        extra["decode_breakdown"] = [decode_breakdown(engine, batch, prompt)
                                     for batch in (1, max(1, int(256 * args.scale)))]
        extra["prefill"] = prefill_throughput(engine, max(1, int(256 * args.scale)), prompt)
        extra["matmul_peak_tflop_s"] = measure_matmul_tflops()
        print(json.dumps(extra, indent=1), flush=True)
    write_json(args.out, {"benchmark": "throughput", "boot_phase_seconds": boot.phase_seconds,
                          "kv_cache_memory_bytes": boot.kv_cache_memory_bytes, "rows": rows, **extra})


if __name__ == "__main__":
    main()
