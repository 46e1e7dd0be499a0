"""gpt-fast (pytorch-labs, BSD) as the batch-1 peer of bench/throughput.py: workload B through its own
`model.py` and `generate.py`, imported from the fetched, git-ignored folder .peers/gpt-fast (its commit in
.peers/gpt-fast/COMMIT). Run by throughput.py in a subprocess; writes one JSON object to --out.

    git --git-dir=<mirror of pytorch-labs/gpt-fast> archive HEAD | tar -x -C .peers/gpt-fast
    git --git-dir=<mirror> rev-parse HEAD > .peers/gpt-fast/COMMIT

What runs is gpt-fast's, as its `generate.py` main() runs it: the `Transformer` built on the `meta` device,
`decode_one_token` compiled with `mode="reduce-overhead", fullgraph=True` (main() rebinds the module global;
so do we), one untimed `generate()` for compilation, then timed `generate()` calls, each timed with a
synchronize on both sides and counted as main() counts them (new tokens / seconds, prefill included). Two
departures, both outside the timed path:
- generate.py imports its `tokenizer` module, which needs sentencepiece and tiktoken. The prompt here is
  token ids, so a stand-in `tokenizer` module is registered before the import. generate.py's other import
  side effects (its inductor settings: coordinate-descent tuning, unique kernel names, the FX graph cache)
  are kept, since they are part of how gpt-fast runs.
- Weights are random (a seeded normal, std 0.02; RMSNorm weights 1), filled on the device after
  `to_empty`, instead of a checkpoint. Greedy: gpt-fast has no argmax path, so temperature 0 (its sampler
  clamps it to 1e-5) and no top-k make the sampler's softmax one-hot, and its draw is the argmax.
Per-step time comes from the `callback` generate() calls after every decoded token: a CUDA event (a
timestamp on the CPU) there, so the median step is measured without adding a synchronize.

`--tiny-cpu-smoke` runs the same path on the CPU with a two-layer model and no compilation, to prove the
subprocess and the JSON without a GPU.
"""

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.throughput import WORKLOADS, prompts_for  # noqa: E402

DEFAULT_PEER_DIR = ROOT / ".peers" / "gpt-fast"
TINY_ARGS = dict(block_size=1024, n_layer=2, n_head=4, n_local_heads=2, dim=64, intermediate_size=128,
                 vocab_size=512, rope_base=500000)
# kvmemo's preset field for each gpt-fast ModelArgs field, to prove both run the same shapes.
PRESET_FIELDS = {"dim": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
                 "n_local_heads": "num_key_value_heads", "intermediate_size": "intermediate_size",
                 "vocab_size": "vocab_size", "rope_base": "rope_theta", "norm_eps": "rms_norm_eps"}


def import_gpt_fast(peer_dir: Path):
    """gpt-fast's model and generate modules, from its folder (it is not a package)."""
    if not (peer_dir / "model.py").is_file() or not (peer_dir / "generate.py").is_file():
        raise SystemExit(f"gpt-fast is not fetched: {peer_dir}/model.py or generate.py is missing")
    stand_in = types.ModuleType("tokenizer")
    stand_in.get_tokenizer = lambda *a, **k: None
    sys.modules["tokenizer"] = stand_in
    sys.path.insert(0, str(peer_dir))
    import generate
    import model

    return model, generate


def model_args(model_module, name: str, tiny: bool):
    if tiny:
        return model_module.ModelArgs(**TINY_ARGS)
    if name not in model_module.transformer_configs:
        raise SystemExit(f"--model {name!r} is not one of gpt-fast's transformer_configs")
    args = model_module.ModelArgs.from_name(name)
    from service.model.presets import PRESETS

    preset = PRESETS.get(name)
    if preset is not None:
        differ = {f: (getattr(args, f), preset[p]) for f, p in PRESET_FIELDS.items() if getattr(args, f) != preset[p]}
        if differ:
            raise SystemExit(f"gpt-fast's {name} differs from kvmemo's preset (gpt-fast, kvmemo): {differ}")
    return args


def build(model_module, args, device: str, seed: int, std: float = 0.02):
    with torch.device("meta"):
        net = model_module.Transformer(args)
    net = net.to(dtype=torch.bfloat16).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, model_module.RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.weight.normal_(0.0, std, generator=gen)
    return net.eval()


class StepClock:
    """A timestamp after every decoded token: CUDA events on the GPU, so recording never synchronizes."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.marks = []

    def __call__(self, _token) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def steps_ms(self) -> list[float]:
        pairs = zip(self.marks, self.marks[1:])
        if self.cuda:
            return [a.elapsed_time(b) for a, b in pairs]
        return [(b - a) * 1000 for a, b in pairs]


def run_once(gen_module, net, prompt, new_tokens: int, device: str):
    clock = StepClock(device)
    gen_module.device_sync(device=device)
    start = time.perf_counter()
    seq, _ = gen_module.generate(net, prompt, new_tokens, batch_size=1, interactive=False, draft_model=None,
                                 callback=clock, temperature=0.0, top_k=None)
    gen_module.device_sync(device=device)
    seconds = time.perf_counter() - start
    return seq[0, prompt.numel():].tolist(), seconds, clock.steps_ms()


def commit_of(peer_dir: Path) -> str | None:
    path = peer_dir / "COMMIT"
    return path.read_text().strip() if path.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3-8b", help="one of gpt-fast's transformer_configs")
    ap.add_argument("--workload", default="B", choices=["B"])
    ap.add_argument("--samples", type=int, default=3, help="timed generate() calls after the compiling one")
    ap.add_argument("--peer-dir", type=Path, default=DEFAULT_PEER_DIR)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--tiny-cpu-smoke", action="store_true", help="a two-layer model on the CPU, not compiled")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the workload (CPU smoke runs)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.tiny_cpu_smoke:
        args.device, args.compile = "cpu", False

    model_module, gen_module = import_gpt_fast(args.peer_dir)
    margs = model_args(model_module, args.model, args.tiny_cpu_smoke)
    workload = {k: max(1, int(v * args.scale)) for k, v in WORKLOADS[args.workload].items()}
    net = build(model_module, margs, args.device, args.seed)
    prompt = torch.tensor(prompts_for(workload, margs.vocab_size, seed=args.seed)[0], dtype=torch.int64,
                          device=args.device)
    new_tokens = workload["output"]
    if args.compile:
        gen_module.decode_one_token = torch.compile(gen_module.decode_one_token, mode="reduce-overhead",
                                                    fullgraph=True)

    _, compile_seconds, _ = run_once(gen_module, net, prompt, new_tokens, args.device)
    runs = [run_once(gen_module, net, prompt, new_tokens, args.device) for _ in range(args.samples)]
    seconds = [s for _, s, _ in runs]
    steps = [ms for _, _, run_steps in runs for ms in run_steps]
    step_ms = statistics.median(steps)
    tokens_per_s = [len(tokens) / s for tokens, s, _ in runs]

    weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    kv_bytes_per_token = 2 * margs.n_layer * margs.n_local_heads * margs.head_dim * 2
    mean_context = workload["prompt"] + new_tokens / 2
    gpt_fast_model_size, _ = gen_module._get_model_size(net)
    payload = {
        "peer": "gpt-fast", "commit": commit_of(args.peer_dir), "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "model": "tiny" if args.tiny_cpu_smoke else args.model, "model_args": vars(margs),
        "compiled": args.compile, "max_seq_length": net.max_seq_length, "prompt_tokens": prompt.numel(), "output_tokens": len(runs[-1][0]),
        "samples": args.samples, "seconds": seconds, "compile_seconds": compile_seconds,
        # generate.py's main() reports the mean of its samples' tokens/s.
        "output_tokens_per_s": statistics.mean(tokens_per_s), "output_tokens_per_s_each": tokens_per_s,
        "decode_step_ms": step_ms, "weight_bytes": weight_bytes,
        # as bench/throughput.py counts kvmemo's: every weight plus the KV cache of the mean context, per step
        "achieved_gb_s": (weight_bytes + mean_context * kv_bytes_per_token) / (step_ms / 1000) / 1e9,
        # generate.py's own "Bandwidth achieved" (weights without the embedding table, times tokens/s)
        "gpt_fast_reported_gb_s": gpt_fast_model_size * statistics.mean(tokens_per_s) / 1e9,
        "sampling": "gpt-fast's sample() at temperature 0 (clamped to 1e-5), top_k None: greedy",
    }
    Path(args.out).write_text(json.dumps(payload))


if __name__ == "__main__":
    main()
