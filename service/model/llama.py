"""The Llama-family decoder (Llama 2/3, Qwen2, Qwen3) in plain PyTorch, readable top to bottom.

Parameter names follow Hugging Face's, except that q/k/v and gate/up are fused into one matrix each
(`qkv_proj`, `gate_up_proj`), which the loader concatenates. Attention goes through the paged KV cache
described by an explicit `AttentionMetadata`. The residual stream is carried beside each layer's output, as
vLLM does, so that the add and the next RMSNorm can be one kernel (`forward(..., fused=True)`)."""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from service.model.attention import AttentionMetadata, attend_cached, paged_attention
from service.model.config import ModelConfig


@functools.cache
def kernels():
    """service.kernels with the fused elementwise modules loaded, on first use: the PyTorch path never imports
    Triton, and a step does not pay an import statement for each layer."""
    import service.kernels.activation
    import service.kernels.rms_norm
    import service.kernels.rotary

    return service.kernels


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor | None,
                    fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(residual + x), residual + x): the residual stream takes x in, and the norm reads it. With no
        residual yet (the first layer) x starts the stream. fused: one Triton kernel, residual updated in place."""
        if fused:
            return kernels().rms_norm.fused_add_rms_norm(x, residual, self.weight, self.eps)
        residual = x if residual is None else x + residual
        return self(residual), residual


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim))
    scaling = cfg.rope_scaling or {}
    if scaling.get("rope_type", scaling.get("type")) != "llama3":
        return inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_medium, smoothed, scaled)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, kv_cache, meta: AttentionMetadata, fused: bool):
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if fused:
            rotary = kernels().rotary
            norm = rotary.HeadNorm(self.q_norm.weight, self.k_norm.weight, self.q_norm.eps) if self.qk_norm else None
            # q rotated in place in the projection's output; k rotated into the cache, v copied beside it.
            rotary.rotary_(q, k, cos, sin, norm, rotary.CacheWrite(v, kv_cache[0], kv_cache[1], meta.slot_mapping))
            out = attend_cached(q, kv_cache[0], kv_cache[1], meta, self.scale)
        else:
            if self.qk_norm:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            out = paged_attention(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale)
        return self.o_proj(out.view(-1, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x, fused: bool):
        gate_up = self.gate_up_proj(x)
        if fused:
            return self.down_proj(kernels().activation.silu_and_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, residual, cos, sin, kv_cache, meta, fused: bool):
        """x: the previous layer's MLP output, not yet added to the residual stream (the embeddings, with
        residual None, for the first layer). Returns this layer's MLP output and the stream before it."""
        h, residual = self.input_layernorm.add_forward(x, residual, fused)
        h = self.self_attn(h, cos, sin, kv_cache, meta, fused)
        h, residual = self.post_attention_layernorm.add_forward(h, residual, fused)
        return self.mlp(h, fused), residual


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # No initial values: the loader assigns every weight, and Embedding's normal_ on the meta device would
        # import torch's decompositions first (seconds of a boot).
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # Not parameters: built on the real device after loading (see init_rope).
        self.rope_cos: torch.Tensor | None = None
        self.rope_sin: torch.Tensor | None = None

    def init_rope(self, max_positions: int, device, dtype) -> None:
        positions = torch.arange(max_positions, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, rope_inv_freq(self.config).to(device))
        emb = torch.cat((freqs, freqs), dim=-1)
        self.rope_cos, self.rope_sin = emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, input_ids, positions, kv_caches, meta: AttentionMetadata, logits_indices=None, fused=False):
        """input_ids and positions: [num_tokens]. Returns the logits for the rows in logits_indices (all rows
        when None), in the model's dtype: greedy rows take their argmax as they are, and the sampler computes
        in float32 for the rows that need probabilities. fused: Triton kernels for the residual add + RMSNorm,
        rotary (with qk_norm and the KV-cache write) and SiLU x mul instead of the PyTorch code
        (service/kernels/: rms_norm.py, rotary.py, activation.py); they need CUDA or Triton's interpreter."""
        cos = self.rope_cos[positions].unsqueeze(1)
        sin = self.rope_sin[positions].unsqueeze(1)
        x, residual = self.model.embed_tokens(input_ids), None
        for layer, kv_cache in zip(self.model.layers, kv_caches):
            x, residual = layer(x, residual, cos, sin, kv_cache, meta, fused)
        if logits_indices is not None:
            x, residual = x[logits_indices], residual[logits_indices]
        return self.lm_head(self.model.norm.add_forward(x, residual, fused)[0])
