"""GGUF files (llama.cpp's single-file format): the metadata becomes our ModelConfig and tokenizer, the tensors
are dequantized to the serving dtype at load, one tensor at a time, and renamed to Hugging Face's names so
that the loader fuses and checks them the same way as safetensors."""

import logging
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from service.errors import ModelLoadError
from service.model.config import ModelConfig

log = logging.getLogger(__name__)

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# What gguf.quants dequantizes; the first six are tested here, the K-quants are common in published files.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                   "Q6_K")

GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}
LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
               "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def _reader_class():
    import gguf

    class Reader(gguf.GGUFReader):
        """GGUFReader on a plain ndarray view of its memmap: slicing a memmap runs numpy's memmap bookkeeping
        on each of the ~250,000 slices a 49k-token vocabulary takes to parse (SmolLM2's file on 2 cores: 3.1-3.7 s
        with the memmap, 0.9-1.0 s with the view)."""

        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._data = np.asarray(value)

    return Reader


def open_gguf(path: Path):
    try:
        return _reader_class()(path)
    except Exception as e:  # the reader raises ValueError, IndexError, struct errors, ... on a bad file
        raise ModelLoadError(f"{path}: not a readable GGUF file (truncated or corrupt?): {type(e).__name__}: {e}") from None


def field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def architecture(reader, path: Path) -> str:
    arch = field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"{path}: unsupported GGUF architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    return arch


def identity_metadata(reader, arch: str) -> dict:
    """The metadata that describes the model (not the vocabulary): what the fingerprint hashes."""
    keys = [k for k in reader.fields if k.startswith(f"{arch}.") or k in ("general.architecture", "general.file_type")]
    return {k: field(reader, k) for k in sorted(keys)}


def config_from_gguf(reader, path: Path) -> ModelConfig:
    arch = architecture(reader, path)
    names = {t.name: t for t in reader.tensors}

    def key(name, default=KeyError):
        value = field(reader, f"{arch}.{name}")
        if value is None:
            if default is KeyError:
                raise ModelLoadError(f"{path}: missing GGUF metadata {arch}.{name}")
            return default
        return value

    scaling = key("rope.scaling.type", "none")
    if scaling != "none":
        raise ModelLoadError(f"{path}: unsupported rope scaling {scaling!r} ({arch}.rope.scaling.type); supported: none")
    if "token_embd.weight" not in names:
        raise ModelLoadError(f"{path}: missing tensor token_embd.weight")
    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim, theta = int(key("attention.key_length", hidden // heads)), float(key("rope.freq_base", 10000.0))
    rope_scaling = None
    if "rope_freqs.weight" in names:
        rope_scaling = llama3_rope_scaling(dequantized(names["rope_freqs.weight"]), head_dim, theta, path)
    eos = [field(reader, f"tokenizer.ggml.{k}") for k in ("eos_token_id", "eot_token_id")]
    return ModelConfig(
        architecture=ARCHITECTURES[arch],
        vocab_size=int(names["token_embd.weight"].shape[1]),  # the reader's shape is [in, out]
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_hidden_layers=int(key("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(key("attention.head_count_kv", heads)),
        head_dim=head_dim,
        max_position_embeddings=int(key("context_length", 2048)),
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        qk_norm="blk.0.attn_q_norm.weight" in names,
        bos_token_id=field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(dict.fromkeys(int(e) for e in eos if e is not None)),
    )


def llama3_divisors(scaling: dict, head_dim: int, theta: float) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py writes as rope_freqs.weight for Llama 3.1-style rope scaling: the
    number each rotary frequency is divided by."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * np.pi * theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    smooth = (old_len / wavelen - low) / (high - low)
    medium = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < old_len / high, 1.0, np.where(wavelen > old_len / low, factor, medium))


def llama3_rope_scaling(divisors: np.ndarray, head_dim: int, theta: float, path: Path) -> dict:
    """The file keeps only the divisors, not the parameters. Every Llama 3.x release uses low 1, high 4 and 8192
    original positions, with the factor the largest divisor; those are taken when they give back the divisors."""
    scaling = {"rope_type": "llama3", "factor": float(divisors.max()), "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    if divisors.shape != (head_dim // 2,) or not np.allclose(llama3_divisors(scaling, head_dim, theta), divisors,
                                                            rtol=1e-4):
        raise ModelLoadError(f"{path}: rope_freqs.weight does not match Llama 3 rope scaling (factor "
                             f"{scaling['factor']}, low 1, high 4, 8192 original positions); no other is supported")
    return scaling


def hf_name(name: str) -> str | None:
    """Hugging Face's name for a GGUF tensor name, or None for tensors we do not use."""
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    m = LAYER_TENSOR.fullmatch(name)
    if m is None or m.group(2) not in LAYER_NAMES:
        return None
    return f"model.layers.{m.group(1)}.{LAYER_NAMES[m.group(2)]}.{m.group(3)}"


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert_hf_to_gguf.py `permute(w, n_head, n_head_kv)` of the q and k rows (weights and
    biases): it interleaves the two rotary halves of each head, we rotate halves (rotate_half)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation itself (tests write GGUF files with it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantized(t) -> np.ndarray:
    """A GGUF tensor as float32 [out, in] (numpy order: the reader's .shape is reversed)."""
    from gguf.quants import dequantize

    if t.tensor_type.name not in SUPPORTED_TYPES:
        raise ModelLoadError(f"tensor {t.name}: unsupported GGUF tensor type {t.tensor_type.name}; "
                             f"supported: {', '.join(SUPPORTED_TYPES)}")
    shape = tuple(int(d) for d in reversed(t.shape))
    w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
    return w if w.flags.writeable else w.copy()  # an F32 tensor is a view of the read-only file mapping


def read_tensors(reader, path: Path, cfg: ModelConfig, dtype, device) -> dict[str, tuple[torch.Tensor, str]]:
    """Every tensor we use, dequantized to dtype on device, under its Hugging Face name (the value's second item
    names it in the file for error messages)."""
    permuted = cfg.architecture == "LlamaForCausalLM"
    start, file_bytes, types, tensors = time.perf_counter(), 0, Counter(), {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            continue
        try:
            w = dequantized(t)
        except ModelLoadError as e:
            raise ModelLoadError(f"{path}: {e}") from None
        except Exception as e:
            raise ModelLoadError(f"{path}: tensor {t.name} ({t.tensor_type.name}, shape {list(t.shape)}) cannot be "
                                 f"dequantized (truncated or corrupt file?): {e}") from None
        if permuted and (".q_proj." in name or ".k_proj." in name):
            w = unpermute(w, cfg.num_attention_heads if ".q_proj." in name else cfg.num_key_value_heads)
        tensors[name] = (torch.from_numpy(w).to(device=device, dtype=dtype), f"{path.name}:{t.name}")
        file_bytes += int(t.n_bytes)
        types[t.tensor_type.name] += 1
    served = sum(v.numel() * v.element_size() for v, _ in tensors.values())
    kinds = ", ".join(f"{n} {k}" for k, n in types.most_common())
    log.info("dequantized %d GGUF tensors (%s) from %s: %.1f MiB in the file -> %.1f MiB %s on %s in %.2f s",
             len(tensors), kinds, path.name, file_bytes / 2**20, served / 2**20, str(dtype).removeprefix("torch."),
             device, time.perf_counter() - start)
    return tensors


def tokenizer_fields(reader, path: Path) -> dict:
    """The tokenizer metadata, for service.tokenizer.GGUF tokenizers."""
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise ModelLoadError(f"{path}: the GGUF file has no tokenizer (no tokenizer.ggml.tokens in its metadata)")
    keys = ("model", "pre", "tokens", "merges", "token_type", "bos_token_id", "eos_token_id", "add_bos_token")
    fields = {k: field(reader, f"tokenizer.ggml.{k}") for k in keys}
    fields["chat_template"] = field(reader, "tokenizer.chat_template")
    return fields
