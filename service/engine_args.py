"""The engine's command-line flags, shared by `kvmemo serve`, `kvmemo profile` and `kvmemo run`.
Each flag falls back to the environment variable KVMEMO_<FLAG> (e.g. KVMEMO_MAX_MODEL_LEN), then to
EngineConfig's default: flags > env > defaults."""

import argparse
import os
from dataclasses import dataclass

from service.config import EngineConfig
from service.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Flag:
    name: str  # the EngineConfig field
    type: type
    help: str


ENGINE_FLAGS = (
    Flag("model", str, "a preset name (tiny, llama-3-8b, qwen3-0.6b, ...) or a Hugging Face model directory"),
    Flag("max_model_len", int, "longest prompt + output in tokens (default: the model's own limit)"),
    Flag("max_num_seqs", int, "most requests in one batch"),
    Flag("max_num_batched_tokens", int, "token budget of one engine step"),
    Flag("block_size", int, "tokens per KV-cache block (8, 16, 32, 64 or 128)"),
    Flag("kv_cache_memory_bytes", int, "bytes for the KV cache (default: the memory profiler decides)"),
    Flag("gpu_memory_utilization", float, "fraction of device memory kvmemo may use, in (0, 1]"),
    Flag("enforce_eager", bool, "no CUDA graphs"),
    Flag("device", str, "auto, cpu or cuda[:N] (auto: cuda when there is one)"),
    Flag("dtype", str, "auto, float32, float16 or bfloat16 (auto: bfloat16 on cuda, float32 on cpu)"),
    Flag("seed", int, "seed of random preset weights"),
)


def env_name(name: str) -> str:
    return "KVMEMO_" + name.upper()


def env_default(name: str, kind: type, default):
    """The value of KVMEMO_<NAME> converted to `kind`, or `default` when unset."""
    raw = os.environ.get(env_name(name))
    if raw is None or raw == "":
        return default
    try:
        if kind is bool:
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError
            return raw.lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{env_name(name)}={raw!r} is not a valid {kind.__name__}") from None


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EngineConfig()
    group = parser.add_argument_group("engine", "each flag falls back to the environment variable KVMEMO_<FLAG>")
    for f in ENGINE_FLAGS:
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.type is bool:
            group.add_argument(flag, action="store_true", default=None, help=f"{f.help} [{env_name(f.name)}]")
        else:
            group.add_argument(flag, type=f.type, default=None, metavar=f.name.upper(),
                               help=f"{f.help} (default: {default}) [{env_name(f.name)}]")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """Raises ConfigError naming the setting, the value and the limit."""
    defaults = EngineConfig()
    values = {}
    for f in ENGINE_FLAGS:
        value = getattr(args, f.name, None)
        values[f.name] = value if value is not None else env_default(f.name, f.type, getattr(defaults, f.name))
    return EngineConfig(**values)
