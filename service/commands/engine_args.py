"""The engine's command-line flags, shared by `kvmemo serve`, `kvmemo profile` and `kvmemo run`.
Each flag falls back to the environment variable KVMEMO_<FLAG> (e.g. KVMEMO_MAX_MODEL_LEN), then to
EngineConfig's default: flags > env > defaults."""

import argparse
import logging
import os
import re
from dataclasses import dataclass

from service.config import EngineConfig
from service.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Flag:
    name: str  # the EngineConfig field
    type: type
    help: str
    cli: str | None = None  # the flag's and env variable's name, when not the field's

    @property
    def option(self) -> str:
        return self.cli or self.name


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]  # a ValueError names the bad text


int_list.__name__ = "comma-separated list of integers"


ENGINE_FLAGS = (
    Flag("model", str, "a preset name (smollm2-135m-instruct, tiny, llama-3-8b, ...), a GGUF file or a Hugging "
         "Face model directory"),
    Flag("max_model_len", int, "longest prompt + output in tokens (default: the model's own limit)"),
    Flag("max_num_seqs", int, "most requests in one batch"),
    Flag("max_num_batched_tokens", int, "token budget of one engine step"),
    Flag("block_size", int, "tokens per KV-cache block (8, 16, 32, 64 or 128)"),
    Flag("kv_cache_memory_bytes", int, "bytes for the KV cache (default: the memory profiler decides)"),
    Flag("gpu_memory_utilization", float, "fraction of device memory kvmemo may use, in (0, 1]"),
    Flag("enforce_eager", bool, "no CUDA graphs"),
    Flag("fused_kernels", bool, "on CUDA, four Triton kernels a layer for its elementwise work (residual add + "
         "RMSNorm, rotary + KV-cache write, SiLU x mul) instead of about thirty PyTorch ones; the CPU ignores it"),
    Flag("async_scheduling", bool, "queue each decode step on the device before the step running there is read "
         "back, so the GPU does not wait for the host between steps"),
    Flag("device", str, "auto, cpu or cuda[:N] (auto: cuda when there is one)"),
    Flag("dtype", str, "auto, float32, float16 or bfloat16 (auto: bfloat16 on cuda, float32 on cpu)"),
    Flag("weights_seed", int, "seed of a preset's random weights (the sampling seed is a request's `seed`)"),
    Flag("cuda_graph_sizes", int_list, "decode batch sizes captured as CUDA graphs, e.g. 1,2,4,8,16 "
         "(default: 1, 2, 4, 8, then steps of 16 up to max_num_seqs)"),
    Flag("kv_cache_policy", str, "which profiled suggestion sizes the KV cache: fit-requested (within "
         "gpu_memory_utilization) or full (all free memory)"),
    Flag("kv_cache_safety_bytes", int, "bytes left free beside the measured components (default: 256 MiB on "
         "CUDA, 64 MiB on CPU)"),
    Flag("plan_store", str, "where measured plans are kept: auto (the ConfigMap when one is named, else a "
         "file), file, configmap or none"),
    Flag("plan_dir", str, "directory of the file plan store (default: ~/.cache/kvmemo/plans)"),
    Flag("plan_free_tolerance_bytes", int, "a stored plan applies while free memory at start is at least the "
         "recorded free memory minus this"),
    Flag("kernel_cache_dir", str, "directory of compiled GPU kernels, kept across restarts (default: "
         "$TRITON_CACHE_DIR, else ~/.cache/kvmemo/kernels)"),
    Flag("configmap_name", str, "the ConfigMap that holds this deployment's plans (in the pod's namespace, "
         "POD_NAMESPACE; POD_NAME names the reporting pod)", cli="configmap"),
)


SERVICE_LINK = re.compile(r"(tcp|udp|sctp)://[^/\s]+:[0-9]+")


def env_name(name: str) -> str:
    return "KVMEMO_" + name.upper()


def env_default(name: str, kind: type, default):
    """The value of KVMEMO_<NAME> converted to `kind`, or `default` when unset."""
    raw = os.environ.get(env_name(name))
    if raw is None or raw == "":
        return default
    if SERVICE_LINK.fullmatch(raw):
        # Kubernetes injects <SERVICE>_PORT=tcp://10.0.0.1:50051 for a Service named after us (kvmemo):
        # that is not a setting of ours.
        logging.getLogger("kvmemo.config").warning(
            "ignoring %s=%s: it is a Kubernetes Service link, not a setting (set enableServiceLinks: false)",
            env_name(name), raw[:60])
        return default
    try:
        if kind is bool:
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError
            return raw.lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{env_name(name)}={raw!r} is not a valid {kind.__name__}") from None


def with_default(text: str, default=None, env: str | None = None) -> str:
    """Help text that names its default once: nothing is added when the text already says what the default is
    (one that depends on other settings, say) or when there is no single default value."""
    if default is not None and "default:" not in text:
        text = f"{text} (default: {default})"
    return f"{text} [{env}]" if env else text


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EngineConfig()
    group = parser.add_argument_group("engine", "each flag falls back to the environment variable KVMEMO_<FLAG>")
    for f in ENGINE_FLAGS:
        flag = "--" + f.option.replace("_", "-")
        env = env_name(f.option)
        if f.type is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=with_default(f.help, "on" if getattr(defaults, f.name) else "off", env))
        else:
            group.add_argument(flag, dest=f.name, type=f.type, default=None, metavar=f.option.upper(),
                               help=with_default(f.help, getattr(defaults, f.name), env))


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """Raises ConfigError naming the setting, the value and the limit."""
    values = {}
    for f in ENGINE_FLAGS:
        value = getattr(args, f.name, None)
        value = value if value is not None else env_default(f.option, f.type, None)
        if value is not None:  # unset: EngineConfig's default, which may depend on other settings
            values[f.name] = value
    return EngineConfig(**values)
