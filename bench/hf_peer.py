"""The peer of bench/throughput.py: the same workload through Hugging Face transformers' continuous batching
(`generate_batch`, sdpa), with random weights of the same shapes. Run by throughput.py in a subprocess."""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throughput import WORKLOADS, prompts_for  # noqa: E402
from service.model.presets import PRESETS  # noqa: E402


def build_model(preset: str, attn: str):
    import transformers

    raw = dict(PRESETS[preset])
    arch = raw.pop("architectures")[0]
    config_cls = {"LlamaForCausalLM": transformers.LlamaConfig, "Qwen3ForCausalLM": transformers.Qwen3Config,
                  "Qwen2ForCausalLM": transformers.Qwen2Config}[arch]
    config = config_cls(**raw)
    config._attn_implementation = attn
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = getattr(transformers, arch)(config)
    torch.set_default_dtype(torch.float32)
    return model.eval()


def generate(model, prompts, max_new_tokens):
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    try:
        return model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
    except TypeError:
        return model.generate_batch(inputs=prompts, generation_config=config)


def main():
    import transformers

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--workload", default="A")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    workload = WORKLOADS[args.workload]
    vocab = PRESETS[args.model]["vocab_size"]
    errors = {}
    for attn in ("sdpa_paged", "sdpa"):
        try:
            model = build_model(args.model, attn)
            generate(model, prompts_for(dict(workload, requests=2), vocab, seed=1), 4)  # warm-up
            prompts = prompts_for(workload, vocab)
            torch.cuda.synchronize()
            start = time.perf_counter()
            results = generate(model, prompts, workload["output"])
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            tokens = sum(len(r.generated_tokens) for r in results.values())
            payload = {"output_tokens": tokens, "seconds": seconds, "output_tokens_per_s": tokens / seconds,
                       "attn_implementation": attn, "transformers": transformers.__version__}
            Path(args.out).write_text(json.dumps(payload))
            return
        except Exception as e:  # try the next attention implementation; report all failures
            errors[attn] = f"{type(e).__name__}: {e}"[:500]
            model = None
            torch.cuda.empty_cache()
    print(json.dumps(errors), file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
