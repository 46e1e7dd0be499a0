"""Builds the model on the `meta` device and fills it with `load_state_dict(assign=True)`: from a Hugging
Face directory through `safetensors`, from a GGUF file (service/model/gguf.py), or with seeded random weights
for a named preset."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from service.errors import ModelLoadError
from service.model.config import ModelConfig, from_hf_dict, read_hf_config
from service.model.llama import LlamaForCausalLM
from service.model import gguf
from service.model.presets import FILE_PRESETS, PRESETS, preset_file
from service.tokenizer import gguf_tokenizer, load_tokenizer

# Our fused parameters and the Hugging Face tensors they are concatenated from.
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


@dataclass(slots=True)
class LoadedModel:
    model: LlamaForCausalLM
    config: ModelConfig
    tokenizer: object
    name: str
    identity: dict  # what the fingerprint hashes: config.json (or GGUF metadata) and weight-file sizes


def hf_sources(name: str) -> list[str]:
    """The Hugging Face tensor names that our parameter `name` is built from."""
    for ours, theirs in FUSED.items():
        if f".{ours}." in name:
            return [name.replace(ours, t) for t in theirs]
    return [name]


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise ModelLoadError(f"{index}: malformed safetensors index: {e}") from None
        return [model_dir / f for f in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{model_dir}: no *.safetensors files (and no model.safetensors.index.json)")
    return files


def _read_hf_tensors(files: list[Path], device) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    tensors = {}
    for f in files:
        if not f.is_file():
            raise ModelLoadError(f"{f}: weight file listed in the index is missing")
        try:
            with safe_open(str(f), framework="pt", device=str(device)) as st:
                for key in st.keys():
                    tensors[key] = (st.get_tensor(key), f.name)
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(f"{f}: cannot read safetensors file: {e}") from None
    return tensors


def _state_dict_from_hf(model: LlamaForCausalLM, tensors: dict, dtype, device,
                        where: str = "the model's safetensors files", config: str = "config.json"
                        ) -> dict[str, torch.Tensor]:
    state = {}
    for name, param in model.named_parameters():
        sources = hf_sources(name)
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            sources = ["model.embed_tokens.weight"]
        parts = []
        for src in sources:
            if src not in tensors:
                raise ModelLoadError(f"missing tensor {src!r} (needed for {name}) in {where}")
            parts.append(tensors[src][0])
        value = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        if tuple(value.shape) != tuple(param.shape):
            shapes = ", ".join(f"{s} {tuple(tensors[s][0].shape)} in {tensors[s][1]}" for s in sources)
            raise ModelLoadError(f"shape mismatch for {name}: expected {tuple(param.shape)} from {config}, got {shapes}")
        state[name] = value.to(device=device, dtype=dtype)
    return state


def seeded_uniform(shape, seed: int, stream: int, device, chunk: int = 1 << 26) -> torch.Tensor:
    """Uniform [-1, 1) float32 numbers from an integer hash of (seed, stream, index): the same on every device,
    unlike torch's generators, whose CPU and CUDA streams differ."""
    numel = int(torch.Size(shape).numel())
    out = torch.empty(numel, dtype=torch.float32, device=device)
    salt = (seed * 0x9E3779B1 + stream * 0x85EBCA77) & 0x7FFFFFFF
    for start in range(0, numel, chunk):
        x = torch.arange(start, min(start + chunk, numel), device=device, dtype=torch.int64)
        x = (x * 0x5851F42D + salt) & 0xFFFFFFFF  # stays below 2**63: no overflow on any device
        x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
        x = ((x ^ (x >> 12)) * 0x297A2D39) & 0xFFFFFFFF
        x = x ^ (x >> 15)
        out[start : start + len(x)] = (x >> 8).to(torch.float32) * (2.0 / (1 << 24)) - 1.0
    return out.view(shape)


def _random_state_dict(model: LlamaForCausalLM, seed: int, dtype, device) -> dict[str, torch.Tensor]:
    """Seeded random weights (uniform with std 0.02; norms 1, biases 0), identical on CPU and CUDA."""
    state = {}
    for stream, (name, param) in enumerate(model.named_parameters()):
        if name.endswith("norm.weight"):
            state[name] = torch.ones(param.shape, dtype=dtype, device=device)
        elif name.endswith(".bias"):
            state[name] = torch.zeros(param.shape, dtype=dtype, device=device)
        else:
            state[name] = (seeded_uniform(param.shape, seed, stream, device) * (0.02 * 3**0.5)).to(dtype)
    if model.config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def _build(cfg: ModelConfig) -> LlamaForCausalLM:
    with torch.device("meta"):
        return LlamaForCausalLM(cfg)


def _finish(model: LlamaForCausalLM, state: dict) -> LlamaForCausalLM:
    model.load_state_dict(state, assign=True, strict=True)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval().requires_grad_(False)


def load_gguf(path: Path, name: str, dtype: torch.dtype, device: torch.device) -> LoadedModel:
    reader = gguf.open_gguf(path)
    cfg = gguf.config_from_gguf(reader, path)
    tokenizer = gguf_tokenizer(gguf.tokenizer_fields(reader, path), cfg.eos_token_ids, str(path))
    model = _build(cfg)
    where = f"{path} (GGUF names: token_embd, blk.N.attn_q, ...)"
    tensors = gguf.read_tensors(reader, path, cfg, dtype, device)
    state = _state_dict_from_hf(model, tensors, dtype, device, where, config="the GGUF metadata")
    identity = {"gguf_file": {"name": path.name, "size": path.stat().st_size},
                "config": gguf.identity_metadata(reader, gguf.architecture(reader, path))}
    return LoadedModel(_finish(model, state), cfg, tokenizer, name, identity)


def load_model(name: str, dtype: torch.dtype, device: torch.device, seed: int = 0) -> LoadedModel:
    if name in FILE_PRESETS:
        return load_gguf(preset_file(name), name, dtype, device)
    if name in PRESETS:
        cfg = from_hf_dict(PRESETS[name], f"preset {name}")
        model = _build(cfg)
        model = _finish(model, _random_state_dict(model, seed, dtype, device))
        tokenizer = load_tokenizer(None, cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_ids)
        return LoadedModel(model, cfg, tokenizer, name, {"preset": name, "seed": seed, "config": PRESETS[name]})
    path = Path(name)
    if path.is_file() or path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model {name!r}: no such GGUF file")
        return load_gguf(path, name, dtype, device)
    if not path.is_dir():
        raise ModelLoadError(f"model {name!r} is neither a preset ({', '.join([*PRESETS, *FILE_PRESETS])}), "
                             f"a GGUF file, nor an existing directory")
    cfg, raw = read_hf_config(path)
    model = _build(cfg)
    files = _weight_files(path)
    state = _state_dict_from_hf(model, _read_hf_tensors(files, device), dtype, device)
    identity = {"config": raw, "weight_files": {f.name: f.stat().st_size for f in files}}
    tokenizer = load_tokenizer(path, cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_ids)
    return LoadedModel(_finish(model, state), cfg, tokenizer, name, identity)
