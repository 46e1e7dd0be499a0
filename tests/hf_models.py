"""Small random Hugging Face models saved as model directories, for equivalence and loading tests."""

from pathlib import Path

import torch

LLAMA = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=500000.0,
             bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 64})
QWEN3 = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rms_norm_eps=1e-6,
             rope_theta=1000000.0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)


def save_hf_model(kind: str, path: Path, seed: int = 0):
    """Saves a random model of `kind` ("llama" or "qwen3") to path; returns the transformers model."""
    import transformers

    torch.manual_seed(seed)
    if kind == "llama":
        config = transformers.LlamaConfig(**LLAMA)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen3Config(**QWEN3)
        model = transformers.Qwen3ForCausalLM(config)
    # Random init leaves norms at 1; perturb them so that a wrong norm shows in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model = model.float().eval()
    model.save_pretrained(path, safe_serialization=True)
    return model

QWEN2 = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=1000000.0,
             bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)


def save_qwen2_model(path: Path, seed: int = 0):
    """Qwen2: bias on q, k and v. Biases are randomised so that a dropped bias shows."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**QWEN2)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, safe_serialization=True)
    return model
