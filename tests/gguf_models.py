"""Small random GGUF files written with gguf.GGUFWriter, the way llama.cpp's convert_hf_to_gguf.py writes them
(q and k rows permuted for llama, norms and biases in F32), and the Hugging Face directory holding the same
weights as the GGUF file's dequantized values, for comparing the two loaders."""

import json
from pathlib import Path

import numpy as np
import torch

from service.model.gguf import permute
from service.tokenizer import byte_spelling

ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
SHAPE = dict(vocab=320, hidden=64, ffn=128, layers=2, heads=4, kv_heads=2, head_dim=16, context=256)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LETTERS = "etaoinshrd"


def vocabulary() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): 3 control tokens, the 256 bytes, then merges of letter pairs up to 320."""
    tokens = SPECIALS + [byte_spelling()[b] for b in range(256)]
    pairs = [(a, b) for a in LETTERS for b in LETTERS][: SHAPE["vocab"] - len(tokens)]
    tokens += [a + b for a, b in pairs]
    return tokens, [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)), [f"{a} {b}" for a, b in pairs]


def random_weights(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 [out, in] array, unpermuted (Hugging Face's row order)."""
    s, rng = SHAPE, np.random.default_rng(seed)
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) * 0.2).astype(np.float32)

    def norm(n):
        return (1 + rng.standard_normal(n) * 0.1).astype(np.float32)

    w = {"token_embd.weight": mat(s["vocab"], s["hidden"]), "output_norm.weight": norm(s["hidden"])}
    if arch == "llama":
        w["output.weight"] = mat(s["vocab"], s["hidden"])  # qwen2/qwen3 here: tied
    for i in range(s["layers"]):
        b = f"blk.{i}."
        w.update({b + "attn_norm.weight": norm(s["hidden"]), b + "ffn_norm.weight": norm(s["hidden"]),
                  b + "attn_q.weight": mat(q, s["hidden"]), b + "attn_k.weight": mat(kv, s["hidden"]),
                  b + "attn_v.weight": mat(kv, s["hidden"]), b + "attn_output.weight": mat(s["hidden"], q),
                  b + "ffn_gate.weight": mat(s["ffn"], s["hidden"]), b + "ffn_up.weight": mat(s["ffn"], s["hidden"]),
                  b + "ffn_down.weight": mat(s["hidden"], s["ffn"])})
        if arch == "qwen2":
            for p, n in (("q", q), ("k", kv), ("v", kv)):
                w[f"{b}attn_{p}.bias"] = (rng.standard_normal(n) * 0.1).astype(np.float32)
        if arch == "qwen3":
            w[b + "attn_q_norm.weight"], w[b + "attn_k_norm.weight"] = norm(s["head_dim"]), norm(s["head_dim"])
    return w


def write_gguf(path: Path, arch: str, qtype: str = "F32", seed: int = 0, metadata: bool = True,
               tokenizer: bool = True, raw: dict | None = None, rope_freqs: np.ndarray | None = None
               ) -> dict[str, np.ndarray]:
    """Writes the file; matrices in qtype, vectors in F32. raw: GGUF name -> (bytes array, type) written as is;
    rope_freqs: Llama 3 rope scaling as llama.cpp writes it. Returns the dequantized values (unpermuted) that a
    loader must end up with."""
    import gguf
    from gguf.quants import dequantize, quantize

    s, t = SHAPE, gguf.GGMLQuantizationType[qtype]
    weights = random_weights(arch, seed)
    writer = gguf.GGUFWriter(str(path), arch)
    if metadata:
        writer.add_block_count(s["layers"])
        writer.add_context_length(s["context"])
        writer.add_embedding_length(s["hidden"])
        writer.add_feed_forward_length(s["ffn"])
        writer.add_head_count(s["heads"])
        writer.add_head_count_kv(s["kv_heads"])
        writer.add_key_length(s["head_dim"])
        writer.add_rope_freq_base(10000.0 if arch == "llama" else 1e6)
        writer.add_layer_norm_rms_eps(1e-5)
    if tokenizer:
        tokens, types, merges = vocabulary()
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(False)
        writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    expected = {}
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    for name, value in weights.items():
        stored = value
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            stored = permute(value, s["heads"] if ".attn_q." in name else s["kv_heads"])
        if name in (raw or {}):
            writer.add_tensor(name, raw[name][0], raw_dtype=raw[name][1])
            continue
        vt = t if value.ndim == 2 else gguf.GGMLQuantizationType.F32
        data = quantize(stored, vt)
        writer.add_tensor(name, data, raw_dtype=vt)
        expected[name] = dequantize(quantize(value, vt), vt).astype(np.float32).reshape(value.shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def save_as_hf_dir(arch: str, values: dict[str, np.ndarray], path: Path, rope_scaling: dict | None = None) -> None:
    """The same weights as a Hugging Face directory (config.json + model.safetensors) for the safetensors loader."""
    from safetensors.torch import save_file

    from service.model.gguf import hf_name

    s = SHAPE
    path.mkdir(parents=True, exist_ok=True)
    config = dict(architectures=[ARCHS[arch]], vocab_size=s["vocab"], hidden_size=s["hidden"],
                  intermediate_size=s["ffn"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                  num_key_value_heads=s["kv_heads"], head_dim=s["head_dim"], max_position_embeddings=s["context"],
                  rms_norm_eps=float(np.float32(1e-5)), rope_theta=10000.0 if arch == "llama" else 1e6,  # GGUF: float32
                  tie_word_embeddings="output.weight" not in values, attention_bias=arch == "qwen2",
                  rope_scaling=rope_scaling, bos_token_id=0, eos_token_id=2)
    (path / "config.json").write_text(json.dumps(config))
    save_file({hf_name(k): torch.from_numpy(np.ascontiguousarray(v)) for k, v in values.items()},
              str(path / "model.safetensors"))
