"""Builds the model on the `meta` device and fills it with `load_state_dict(assign=True)`: from a Hugging
Face directory through `safetensors` (streamed into device memory on CUDA: service/model/safetensors_stream.py),
from a GGUF file (service/model/gguf.py), or with seeded random weights for a named preset (generated on the
device on CUDA). Each part of loading is timed."""

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from service.errors import ModelLoadError
from service.model.config import ModelConfig, from_hf_dict, read_hf_config
from service.model.llama import LlamaForCausalLM
from service.model import gguf, safetensors_stream
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
    # Wall seconds of each part: build_model (meta model and tokenizer), then read and copy (weight files into
    # device tensors; streaming overlaps the copies with the reads, and copy is what remains after the last
    # byte was read) or generate (a preset's random weights).
    seconds: dict[str, float] = field(default_factory=dict)
    bytes_read: int = 0  # from weight files


@contextmanager
def timed_part(seconds: dict[str, float], part: str, device=None):
    start = time.perf_counter()
    try:
        yield
    finally:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[part] = seconds.get(part, 0.0) + time.perf_counter() - start


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


def _checked_sources(model: LlamaForCausalLM, name: str, param, shapes: dict[str, tuple[tuple[int, ...], str]],
                     where: str, config: str) -> list[str]:
    """The source tensors of parameter `name`, after checking that they exist and that their rows, stacked,
    make its shape. shapes: source name -> (shape, the file that holds it)."""
    sources = hf_sources(name)
    if name == "lm_head.weight" and model.config.tie_word_embeddings:
        sources = ["model.embed_tokens.weight"]
    for src in sources:
        if src not in shapes:
            raise ModelLoadError(f"missing tensor {src!r} (needed for {name}) in {where}")
    first = shapes[sources[0]][0]
    stacked = (sum(shapes[s][0][0] if shapes[s][0] else 1 for s in sources), *first[1:])
    if stacked != tuple(param.shape) or any(shapes[s][0][1:] != first[1:] for s in sources):
        got = ", ".join(f"{s} {shapes[s][0]} in {shapes[s][1]}" for s in sources)
        raise ModelLoadError(f"shape mismatch for {name}: expected {tuple(param.shape)} from {config}, got {got}")
    return sources


def _state_dict_from_hf(model: LlamaForCausalLM, tensors: dict, dtype, device,
                        where: str = "the model's safetensors files", config: str = "config.json"
                        ) -> dict[str, torch.Tensor]:
    shapes = {k: (tuple(t.shape), f) for k, (t, f) in tensors.items()}
    state = {}
    for name, param in model.named_parameters():
        parts = [tensors[s][0] for s in _checked_sources(model, name, param, shapes, where, config)]
        value = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        state[name] = value.to(device=device, dtype=dtype)
    return state


def _stream_hf_state_dict(model: LlamaForCausalLM, files: list[Path], dtype, device,
                          seconds: dict[str, float]) -> tuple[dict[str, torch.Tensor], int]:
    """Each parameter allocated once on the device, its source tensors' bytes streamed straight into its rows
    (the fused q/k/v and gate/up too); a tensor stored in another dtype lands in a temporary of its own and is
    converted once every byte has arrived. Returns the state dict and the bytes read."""
    entries = {}
    for f in files:
        if not f.is_file():
            raise ModelLoadError(f"{f}: weight file listed in the index is missing")
        entries.update(safetensors_stream.read_header(f))
    shapes = {k: (e.shape, e.file.name) for k, e in entries.items()}
    state, pieces, conversions = {}, [], []
    for name, param in model.named_parameters():
        sources = _checked_sources(model, name, param, shapes, "the model's safetensors files", "config.json")
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # _finish ties it to the embedding
        value = torch.empty(param.shape, dtype=dtype, device=device)
        row = 0
        for src in sources:
            e = entries[src]
            rows = e.shape[0] if e.shape else 1
            target = value.view(-1, *value.shape[1:])[row : row + rows] if value.dim() else value
            if e.dtype == dtype:
                landing = target
            else:
                landing = torch.empty(e.shape, dtype=e.dtype, device=device)
                conversions.append((target, landing))
            pieces.append(safetensors_stream.Piece(e.file, e.start, e.nbytes, landing.view(-1).view(torch.uint8), 0))
            row += rows
        state[name] = value
    with timed_part(seconds, "read", device):
        nbytes = safetensors_stream.stream(pieces, device)
    with timed_part(seconds, "copy", device):
        for target, landing in conversions:
            target.copy_(landing.view(target.shape))
        conversions.clear()
    if model.config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state, nbytes


def salt_of(seed: int, stream: int) -> int:
    return (seed * 0x9E3779B1 + stream * 0x85EBCA77) & 0x7FFFFFFF


RANDOM_SCALE = 0.02 * 3**0.5  # uniform [-1, 1) times this has std 0.02


def seeded_uniform(shape, seed: int, stream: int, device, chunk: int = 1 << 26, first: int = 0) -> torch.Tensor:
    """Uniform [-1, 1) float32 numbers from an integer hash of (seed, stream, index), for the indices from
    `first` on: the same on every device, unlike torch's generators, whose CPU and CUDA streams differ."""
    numel = int(torch.Size(shape).numel())
    out = torch.empty(numel, dtype=torch.float32, device=device)
    salt = salt_of(seed, stream)
    for start in range(0, numel, chunk):
        x = torch.arange(first + start, first + min(start + chunk, numel), device=device, dtype=torch.int64)
        x = (x * 0x5851F42D + salt) & 0xFFFFFFFF  # stays below 2**63: no overflow on any device
        x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
        x = ((x ^ (x >> 12)) * 0x297A2D39) & 0xFFFFFFFF
        x = x ^ (x >> 15)
        out[start : start + len(x)] = (x >> 8).to(torch.float32) * (2.0 / (1 << 24)) - 1.0
    return out.view(shape)


def _random_state_dict(model: LlamaForCausalLM, seed: int, dtype, device) -> dict[str, torch.Tensor]:
    """Seeded random weights (uniform with std 0.02; norms 1, biases 0), identical on CPU and CUDA; on CUDA one
    Triton kernel writes each weight in place (service/kernels/random_weights.py)."""
    state = {}
    for stream, (name, param) in enumerate(model.named_parameters()):
        if name.endswith("norm.weight"):
            state[name] = torch.ones(param.shape, dtype=dtype, device=device)
        elif name.endswith(".bias"):
            state[name] = torch.zeros(param.shape, dtype=dtype, device=device)
        elif device.type == "cuda":
            from service.kernels.random_weights import fill_seeded_uniform_

            state[name] = fill_seeded_uniform_(torch.empty(param.shape, dtype=dtype, device=device),
                                               salt_of(seed, stream), RANDOM_SCALE)
        else:
            state[name] = (seeded_uniform(param.shape, seed, stream, device) * RANDOM_SCALE).to(dtype)
    if model.config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def _build(cfg: ModelConfig) -> LlamaForCausalLM:
    with torch.device("meta"):
        return LlamaForCausalLM(cfg)


def uninitialised_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    """The model with storage for its weights on `device` and nothing written there: for compiling kernels."""
    return _build(cfg).to(dtype).to_empty(device=device).eval().requires_grad_(False)


def _finish(model: LlamaForCausalLM, state: dict) -> LlamaForCausalLM:
    model.load_state_dict(state, assign=True, strict=True)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval().requires_grad_(False)


def load_gguf(path: Path, name: str, dtype: torch.dtype, device: torch.device) -> LoadedModel:
    seconds = {}
    with timed_part(seconds, "build_model"):
        reader = gguf.open_gguf(path)
        cfg = gguf.config_from_gguf(reader, path)
        tokenizer = gguf_tokenizer(gguf.tokenizer_fields(reader, path), cfg.eos_token_ids, str(path))
        model = _build(cfg)
    where = f"{path} (GGUF names: token_embd, blk.N.attn_q, ...)"
    with timed_part(seconds, "read", device):
        tensors = gguf.read_tensors(reader, path, cfg, dtype, device)
    with timed_part(seconds, "copy", device):
        state = _state_dict_from_hf(model, tensors, dtype, device, where, config="the GGUF metadata")
        model = _finish(model, state)
    identity = {"gguf_file": {"name": path.name, "size": path.stat().st_size},
                "config": gguf.identity_metadata(reader, gguf.architecture(reader, path))}
    return LoadedModel(model, cfg, tokenizer, name, identity, seconds, path.stat().st_size)


@dataclass(frozen=True, slots=True)
class ModelSource:
    kind: str  # "preset" (seeded random weights), "gguf" (a GGUF file; file presets too) or "hf" (a directory)
    path: Path | None = None


def model_source(name: str) -> ModelSource:
    """What `--model` names, checked before anything is read."""
    if name in FILE_PRESETS:
        return ModelSource("gguf", preset_file(name))
    if name in PRESETS:
        return ModelSource("preset")
    path = Path(name)
    if path.is_file() or path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model {name!r}: no such GGUF file")
        return ModelSource("gguf", path)
    if not path.is_dir():
        raise ModelLoadError(f"model {name!r} is neither a preset ({', '.join([*PRESETS, *FILE_PRESETS])}), "
                             f"a GGUF file, nor an existing directory")
    return ModelSource("hf", path)


def read_model_config(name: str) -> ModelConfig:
    """The hyper-parameters alone, from what load_model reads first: a preset, a GGUF header or config.json."""
    source = model_source(name)
    if source.kind == "preset":
        return from_hf_dict(PRESETS[name], f"preset {name}")
    if source.kind == "gguf":
        return gguf.config_from_gguf(gguf.open_gguf(source.path), source.path)
    return read_hf_config(source.path)[0]


def load_model(name: str, dtype: torch.dtype, device: torch.device, seed: int = 0) -> LoadedModel:
    source = model_source(name)
    if source.kind == "preset":
        return load_preset(name, seed, dtype, device)
    if source.kind == "gguf":
        return load_gguf(source.path, name, dtype, device)
    return load_hf_directory(source.path, name, dtype, device)


def load_preset(name: str, seed: int, dtype: torch.dtype, device: torch.device) -> LoadedModel:
    seconds = {}
    with timed_part(seconds, "build_model"):
        cfg = from_hf_dict(PRESETS[name], f"preset {name}")
        model = _build(cfg)
        tokenizer = load_tokenizer(None, cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_ids)
    with timed_part(seconds, "generate", device):
        model = _finish(model, _random_state_dict(model, seed, dtype, device))
    return LoadedModel(model, cfg, tokenizer, name, {"preset": name, "seed": seed, "config": PRESETS[name]},
                       seconds)


def load_hf_directory(path: Path, name: str, dtype: torch.dtype, device: torch.device) -> LoadedModel:
    seconds = {}
    with timed_part(seconds, "build_model"):
        cfg, raw = read_hf_config(path)
        model = _build(cfg)
        files = _weight_files(path)
        tokenizer = load_tokenizer(path, cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_ids)
    if device.type == "cuda":
        state, nbytes = _stream_hf_state_dict(model, files, dtype, device, seconds)
    else:  # mmap: the CPU tensors are the file's pages, with no copy at all
        with timed_part(seconds, "read"):
            tensors = _read_hf_tensors(files, device)
        with timed_part(seconds, "copy"):
            state = _state_dict_from_hf(model, tensors, dtype, device)
        nbytes = sum(f.stat().st_size for f in files)
    model = _finish(model, state)
    identity = {"config": raw, "weight_files": {f.name: f.stat().st_size for f in files}}
    return LoadedModel(model, cfg, tokenizer, name, identity, seconds, nbytes)
