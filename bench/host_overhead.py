"""Host CPU time per engine step, by part, for the real engine (`tiny` preset on the CPU) at batch 1 and at
batch 256 of pure decode (ignore_eos). Parts: scheduler, prepare (batch -> tensors), model forward, sampler,
the rest of the runner's step (sorting, SamplingBatch), and output processing (token accounting, stop checks,
detokenising, RequestOutputs).

    PYTHONPATH=. python3 bench/host_overhead.py --label before --out bench/results/host-overhead-cpu-before.json

Timing wraps the engine's own methods on this engine's instances (and a forward hook on the model), so the
engine carries no timing code. Each part is measured as this thread's CPU time (time.thread_time, with torch
held to one thread so the model's work is on it) and medians over many steps are reported: the machine may
be shared, and CPU time is what a loaded neighbour disturbs least.
"""

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import environment, write_json  # noqa: E402
from service.boot import build_engine  # noqa: E402
from service.config import EngineConfig  # noqa: E402
from service.engine import model_runner  # noqa: E402
from service.engine.sampling_params import SamplingParams  # noqa: E402

PARTS = ("scheduler", "prepare", "model", "sampler", "runner_other", "output", "step")


class StepTimer:
    """Accumulates this thread's CPU time per part within one step."""

    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[name] += time.thread_time() - start
        return timed

    def end_step(self, keep: bool) -> None:
        if keep:
            self.steps.append(dict(self.current))
        self.current = defaultdict(float)


def install(engine, timer: StepTimer) -> None:
    runner = engine.runner
    # A pure-decode step with async scheduling schedules the step after it (schedule_ahead), not itself.
    engine.scheduler.schedule = timer.wrap("scheduler", engine.scheduler.schedule)
    engine.scheduler.schedule_ahead = timer.wrap("scheduler", engine.scheduler.schedule_ahead)
    runner.prepare = timer.wrap("prepare", runner.prepare)
    runner.launch = timer.wrap("run", runner.launch)
    model_runner.sample_on_device = timer.wrap("sampler", model_runner.sample_on_device)
    starts = {}
    runner.model.register_forward_pre_hook(lambda *_: starts.__setitem__("model", time.thread_time()))
    runner.model.register_forward_hook(
        lambda *_: timer.current.__setitem__("model", timer.current["model"] + time.thread_time() - starts["model"]))


def measure(engine, timer: StepTimer, batch: int, prompt: int, steps: int) -> dict:
    vocab = engine.model_config.vocab_size
    gen = torch.Generator().manual_seed(batch)
    prompts = torch.randint(10, vocab, (batch, prompt), generator=gen).tolist()
    params = SamplingParams(max_tokens=steps + 2, temperature=0, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(f"b{batch}-{i}", p, params)
    while engine.has_unfinished():
        sched = engine.scheduler
        pure_decode = (len(sched.running) == batch and not sched.waiting
                       and all(s.num_computed_tokens == s.num_tokens - 1 for s in sched.running))
        start = time.thread_time()
        engine.step()
        timer.current["step"] = time.thread_time() - start
        timer.end_step(pure_decode)
    rows = timer.steps
    timer.steps = []
    for r in rows:
        r["runner_other"] = r["run"] - r.get("prepare", 0) - r.get("model", 0) - r.get("sampler", 0)
        r["output"] = r["step"] - r.get("scheduler", 0) - r.get("run", 0)
    median_ms = {p: statistics.median(r.get(p, 0.0) for r in rows) * 1000 for p in PARTS}
    median_ms["host_without_model"] = statistics.median(r["step"] - r.get("model", 0) for r in rows) * 1000
    return {"batch": batch, "prompt_tokens": prompt, "decode_steps_measured": len(rows),
            "median_cpu_ms_per_step": median_ms}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True, help="what this run measures, e.g. before / after")
    ap.add_argument("--steps", type=int, default=200, help="decode steps measured at each batch size")
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    torch.set_num_threads(1)  # the model's CPU work on this thread, where thread_time sees it
    batches = [int(b) for b in args.batches.split(",")]
    config = EngineConfig(model="tiny", device="cpu", max_num_seqs=max(batches), max_num_batched_tokens=8192,
                          max_model_len=512, plan_store="none", kv_cache_memory_bytes=256 << 20)
    engine, _ = build_engine(config)
    timer = StepTimer()
    install(engine, timer)
    measure(engine, timer, 4, args.prompt, 8)  # warm-up
    rows = []
    for b in batches:
        row = measure(engine, timer, b, args.prompt, args.steps)
        print(b, {k: round(v, 3) for k, v in row["median_cpu_ms_per_step"].items()}, flush=True)
        rows.append(row)
    write_json(args.out, {"benchmark": "host_overhead", "label": args.label, "model": "tiny",
                          "unit": "host CPU ms per pure-decode step (thread_time, median), torch on 1 thread",
                          "environment": environment(), "rows": rows})


if __name__ == "__main__":
    main()
