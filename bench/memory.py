"""Does the measured plan hold, and how fast is a boot that has one? For each model and CUDA-graph setting:
a cold boot that profiles (policy `full`, empty kernel cache), the prediction error of non-KV memory after
capture and after a max-concurrency soak at that size, OOMs and peak device memory during the soak; then
three more boots, each in its own process:
- a restarted container: the plan from the store and the kernel cache the cold boot filled (an emptyDir
  survives container restarts; the page cache is warm too);
- a new pod: the plan from the store, an empty kernel cache;
- a second cold boot (no plan, empty kernel cache), whose suggestion against the first is the
  profile-to-profile spread.
Python bytecode is cached before the first boot, as it is in an installed image (PYTHONPYCACHEPREFIX; some
machines install packages read-only, and then every process would compile every module it imports).

    PYTHONPATH=. python3 bench/memory.py --out bench/results/memory.json [--log-dir DIR]
"""

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import environment, write_json  # noqa: E402
from service.boot import build_engine  # noqa: E402
from service.config import EngineConfig  # noqa: E402
from service.engine.sampling_params import SamplingParams  # noqa: E402
from service.memory import snapshot  # noqa: E402

CASES = [  # model, max_model_len: long enough that the KV cache is never capped below the `full` size
    ("llama-3-8b", 4096),
    ("qwen3-0.6b", 8192),
]


def config_for(args) -> EngineConfig:
    return EngineConfig(model=args.model, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                        max_num_batched_tokens=args.max_num_batched_tokens, enforce_eager=not args.graphs,
                        kv_cache_policy="full", plan_store="file", plan_dir=args.plan_dir,
                        kernel_cache_dir=args.kernel_cache_dir, kv_cache_safety_bytes=args.safety_bytes)


def used_bytes(device) -> int:
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return total - free
    return snapshot.take(device).used


ALLOCATOR_STATS = ("allocated_bytes.all.peak", "reserved_bytes.all.peak", "reserved_bytes.all.current",
                   "inactive_split_bytes.all.current", "segment.all.current", "num_alloc_retries", "num_ooms")


def memory_state(device) -> dict:
    """What a soak's memory growth is made of: the driver's view, the allocator's, and what lies outside it."""
    now = snapshot.take(device)
    state = {"used_bytes": now.used, "reserved_bytes": now.reserved, "allocated_bytes": now.allocated,
             "non_torch_bytes": now.non_torch}
    if device.type == "cuda":
        stats = torch.cuda.memory_stats(device)
        state["allocator"] = {k: stats.get(k) for k in ALLOCATOR_STATS}
    return state


def soak(engine, seconds: float, seed: int = 0) -> dict:
    """Keeps more requests in flight than max_num_seqs, with prompts and outputs long enough to fill the KV
    cache, for `seconds`; tracks the peak device memory in use, and the allocator's reserved bytes and the
    memory outside the allocator at their highest, so that growth beyond the profile can be told apart."""
    rng = random.Random(seed)
    limit = engine.max_model_len
    vocab = engine.model_config.vocab_size
    in_flight, next_id, completed, peak_used, steps = set(), 0, 0, 0, 0
    device = engine.runner.device
    before = memory_state(device)
    peak_reserved, peak_non_torch = before["reserved_bytes"], before["non_torch_bytes"]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        while len(in_flight) < engine.config.max_num_seqs + 16:
            prompt_len = rng.randint(limit // 4, limit // 2)
            params = SamplingParams(max_tokens=rng.randint(limit // 8, limit // 2 - 1), temperature=0.8,
                                    top_p=0.95, top_k=50, ignore_eos=True)
            engine.add_request(str(next_id), [rng.randrange(10, vocab) for _ in range(prompt_len)], params)
            in_flight.add(str(next_id))
            next_id += 1
        for out in engine.step():
            if out.finished:
                in_flight.discard(out.request_id)
                completed += 1
        steps += 1
        used = used_bytes(device)
        peak_used = max(peak_used, used)
        if device.type == "cuda":
            reserved = torch.cuda.memory_reserved(device)
            peak_reserved, peak_non_torch = max(peak_reserved, reserved), max(peak_non_torch, used - reserved)
    after = memory_state(device)
    for rid in list(in_flight):
        engine.abort(rid)
    return {"requests_completed": completed, "steps": steps, "peak_used_bytes": peak_used, "ooms": engine.num_ooms,
            "preemptions": engine.scheduler.num_preemptions,
            "soak_memory": {"before": before, "after": after, "peak_reserved_bytes": peak_reserved,
                            "peak_non_torch_bytes": peak_non_torch,
                            "reserved_growth_bytes": after["reserved_bytes"] - before["reserved_bytes"],
                            "peak_reserved_growth_bytes": peak_reserved - before["reserved_bytes"],
                            "non_torch_growth_bytes": after["non_torch_bytes"] - before["non_torch_bytes"],
                            "peak_non_torch_growth_bytes": peak_non_torch - before["non_torch_bytes"]}}


def run_boot(args) -> dict:
    engine, report = build_engine(config_for(args))
    row = {"plan_source": report.plan_source, "ready_s": report.phase_seconds["total"],
           "phase_seconds": report.phase_seconds, "load_seconds": report.load_seconds,
           "kernels_compiled": report.kernels_compiled, "kv_cache_memory_bytes": report.kv_cache_memory_bytes,
           "prediction_error_bytes": report.prediction_error_bytes, "actual_non_kv_bytes": report.actual_non_kv_bytes,
           "plan_stale": report.plan_stale}
    if report.record is not None:
        row.update(components=report.record.to_json()["components"],
                   suggestions=report.record.to_json()["suggestions"], safety_bytes=report.record.safety_bytes,
                   total_bytes=report.record.total_bytes, free_at_start_bytes=report.record.free_at_start_bytes)
    if args.soak > 0:
        row.update(soak(engine, args.soak))
        now = snapshot.take(engine.runner.device)
        actual = report.baseline.free - now.free - report.kv_cache_memory_bytes
        row["actual_non_kv_after_run_bytes"] = actual
        if report.record is not None:
            row["prediction_error_after_run_bytes"] = actual - report.record.components.non_kv
        row["peak_used_ratio"] = row["peak_used_bytes"] / report.baseline.total
    return row


def cache_bytecode() -> None:
    """A throwaway boot of the tiny preset imports every module a boot needs, so their bytecode is cached."""
    os.environ.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "kvmemo-bench-pycache"))
    code = ("from service.boot import build_engine; from service.config import EngineConfig; "
            "build_engine(EngineConfig(model='tiny', plan_store='none', kv_cache_memory_bytes=1 << 26))")
    with tempfile.TemporaryDirectory() as kernels:
        subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent,
                       env={**os.environ, "TRITON_CACHE_DIR": kernels})


def boot_in_subprocess(args, model, max_model_len, graphs, plan_dir, kernel_dir, soak_s, log_name) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, __file__, "--single", "--model", model, "--max-model-len", str(max_model_len),
               "--graphs" if graphs else "--no-graphs", "--plan-dir", plan_dir, "--kernel-cache-dir", kernel_dir,
               "--soak", str(soak_s), "--max-num-seqs", str(args.max_num_seqs),
               "--max-num-batched-tokens", str(args.max_num_batched_tokens), "--out", f.name,
               *(["--safety-bytes", str(args.safety_bytes)] if args.safety_bytes is not None else [])]
        log = open(Path(args.log_dir) / f"{log_name}.log", "w") if args.log_dir else None
        try:
            subprocess.run(cmd, check=True, stderr=log)
        finally:
            if log:
                log.close()
        return json.loads(Path(f.name).read_text())


def boots(args, model, max_model_len, graphs, soak_s) -> dict:
    """The cold boot, the restarted container, the new pod and the second cold boot of one case."""
    name = f"{Path(model).name}-{'graphs' if graphs else 'eager'}"
    with tempfile.TemporaryDirectory() as root:
        dirs = {k: os.path.join(root, k) for k in ("plans", "plans2", "kernels", "kernels-new-pod", "kernels2")}
        one = lambda plans, kernels, soak, tag: boot_in_subprocess(  # noqa: E731
            args, model, max_model_len, graphs, dirs[plans], dirs[kernels], soak, f"{name}-{tag}")
        wanted = set(args.boots.split(","))
        runs = {"cold": lambda: one("plans", "kernels", soak_s, "cold"),
                "restart": lambda: one("plans", "kernels", 0, "restart"),
                "new_pod": lambda: one("plans", "kernels-new-pod", 0, "new-pod"),
                "cold2": lambda: one("plans2", "kernels2", 0, "cold2")}
        return {k: (run() if k == "cold" or k in wanted else {}) for k, run in runs.items()}


def summary(env, model, graphs, soak_s, b) -> dict:
    cold, restart, new_pod, cold2 = b["cold"], b["restart"], b["new_pod"], b["cold2"]
    spread = None
    if cold.get("suggestions") and cold2.get("suggestions"):
        spread = abs(cold["suggestions"]["full_bytes"] - cold2["suggestions"]["full_bytes"])
    return dict(env, model=model, cudagraphs=graphs, soak_seconds=soak_s,
                prediction_error_bytes=cold["prediction_error_bytes"],
                prediction_error_after_run_bytes=cold.get("prediction_error_after_run_bytes"),
                margin_bytes=cold.get("safety_bytes"), ooms=cold.get("ooms"),
                soak_memory=cold.get("soak_memory"), requests_completed=cold.get("requests_completed"),
                peak_used_ratio=cold.get("peak_used_ratio"),
                cold_ready_s=cold["ready_s"], restart_ready_s=restart.get("ready_s"),
                new_pod_ready_s=new_pod.get("ready_s"),
                restart_over_cold=restart["ready_s"] / cold["ready_s"] if restart else None,
                profile_s=cold["phase_seconds"]["profile"],
                profile2_s=cold2["phase_seconds"]["profile"] if cold2 else None,
                profile_spread_bytes=spread,
                kernels_compiled={k: v.get("kernels_compiled") for k, v in b.items()},
                load_seconds={k: v.get("load_seconds") for k, v in b.items()},
                warm_plan_source=restart.get("plan_source"), **b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--single", action="store_true", help="one boot (used by the parent run)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--cases", default=None, help="model:on|off:soak_seconds,... (default: every case, 300 s); "
                    "a model may be a Hugging Face directory")
    ap.add_argument("--plan-dir", default=None)
    ap.add_argument("--kernel-cache-dir", default=None)
    ap.add_argument("--log-dir", default=None, help="each boot's log, as <model>-<graphs>-<boot>.log")
    ap.add_argument("--soak", type=float, default=300)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--safety-bytes", type=int, default=None,
                    help="the KV-cache safety margin (default: the service's default for the device)")
    ap.add_argument("--boots", default="cold,restart,new_pod,cold2",
                    help="which boots of each case run (the cold one always does)")
    args = ap.parse_args()
    if args.single:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        Path(args.out).write_text(json.dumps(run_boot(args)))
        return

    lens = dict(CASES)
    cases = [(m, g, args.soak) for m, _ in CASES for g in (True, False)]
    if args.cases:
        cases = [(m, g == "on", float(s)) for m, g, s in (c.rsplit(":", 2) for c in args.cases.split(","))]
    if args.log_dir:
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    env = environment()
    cache_bytecode()
    rows = []
    for model, graphs, soak_s in cases:
        try:
            b = boots(args, model, lens.get(model, args.max_model_len), graphs, soak_s)
        except subprocess.CalledProcessError as e:
            rows.append(dict(env, model=model, cudagraphs=graphs, error=f"boot failed: exit {e.returncode}"))
            write_json(args.out, {"benchmark": "memory", "rows": rows})
            continue
        row = summary(env, model, graphs, soak_s, b)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("cold", "restart", "new_pod", "cold2")}),
              flush=True)
        write_json(args.out, {"benchmark": "memory", "rows": rows})


if __name__ == "__main__":
    main()
