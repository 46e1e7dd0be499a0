"""The rotary embedding on q and k in place, in one kernel for both (PyTorch's q * cos + rotate_half(q) * sin
launches five kernels for each), with Qwen3's per-head RMSNorm of q and k (qk_norm, which comes before the
rotation) fused in when its weights are given.

q and k may be strided views of the fused QKV projection's output: one program handles every head of one
token. cos and sin are the model's tables gathered at the tokens' positions ([tokens, 1, head_dim] or
[tokens, head_dim], llama3 scaling already in them); both halves of a row hold the same values, so the kernel
reads the first. Rounding follows the PyTorch code step by step (each product rounded to the activation
dtype, then the sum)."""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True, slots=True)
class HeadNorm:
    """Qwen3's qk_norm: RMSNorm over head_dim of each q head and each k head."""

    q_weight: torch.Tensor  # [head_dim]
    k_weight: torch.Tensor  # [head_dim]
    eps: float


@triton.jit
def _rotate_heads(ptr, stride_h, num_heads, cos, sin, w_ptr, eps, dims, dims_ok,
                  HEADS_PAD: tl.constexpr, HALF: tl.constexpr, NORM: tl.constexpr):
    heads = tl.arange(0, HEADS_PAD)
    ok = (heads[:, None] < num_heads) & dims_ok[None, :]
    first = ptr + heads[:, None] * stride_h + dims[None, :]
    dtype = ptr.dtype.element_ty
    x1 = tl.load(first, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(first + HALF, mask=ok, other=0.0).to(tl.float32)
    if NORM:
        rstd = tl.rsqrt((tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / (2 * HALF) + eps)[:, None]
        w1 = tl.load(w_ptr + dims, mask=dims_ok, other=0.0).to(tl.float32)[None, :]
        w2 = tl.load(w_ptr + HALF + dims, mask=dims_ok, other=0.0).to(tl.float32)[None, :]
        x1 = (w1 * (x1 * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
        x2 = (w2 * (x2 * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    out1 = (x1 * cos).to(dtype).to(tl.float32) - (x2 * sin).to(dtype).to(tl.float32)
    out2 = (x2 * cos).to(dtype).to(tl.float32) + (x1 * sin).to(dtype).to(tl.float32)
    tl.store(first, out1.to(dtype), mask=ok)
    tl.store(first + HALF, out2.to(dtype), mask=ok)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, eps, num_q_heads, num_k_heads,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_cos, stride_sin,
                   Q_PAD: tl.constexpr, K_PAD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr,
                   NORM: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    dims = tl.arange(0, HALF_PAD)
    dims_ok = dims < HALF
    cos = tl.load(cos_ptr + token * stride_cos + dims, mask=dims_ok, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + token * stride_sin + dims, mask=dims_ok, other=0.0).to(tl.float32)[None, :]
    _rotate_heads(q_ptr + token * stride_qt, stride_qh, num_q_heads, cos, sin, qw_ptr, eps, dims, dims_ok,
                  Q_PAD, HALF, NORM)
    _rotate_heads(k_ptr + token * stride_kt, stride_kh, num_k_heads, cos, sin, kw_ptr, eps, dims, dims_ok,
                  K_PAD, HALF, NORM)


def _check(q, k, cos, sin):
    if q.dim() != 3 or k.dim() != 3 or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2] or q.shape[2] % 2:
        raise ValueError(f"expected q [tokens, heads, head_dim] and k [tokens, kv_heads, head_dim] with an even "
                         f"head_dim; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.dtype != k.dtype or q.stride(2) != 1 or k.stride(2) != 1:
        raise ValueError("q and k need one dtype and a contiguous last (head_dim) dimension")
    tokens, head_dim = q.shape[0], q.shape[2]
    for name, table in (("cos", cos), ("sin", sin)):
        if table.shape[0] != tokens or table.shape[-1] != head_dim or table.numel() != tokens * head_dim:
            raise ValueError(f"{name} must be [{tokens}, {head_dim}] or [{tokens}, 1, {head_dim}]; got "
                             f"{tuple(table.shape)}")


def rotary_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            norm: HeadNorm | None = None) -> None:
    """Rotates q and k in place (after RMSNorm of each head when norm is given)."""
    _check(q, k, cos, sin)
    tokens, num_q_heads, head_dim = q.shape
    if not tokens:
        return
    num_k_heads, half = k.shape[1], head_dim // 2
    cos, sin = cos.reshape(tokens, head_dim), sin.reshape(tokens, head_dim)
    q_weight, k_weight, eps = (norm.q_weight, norm.k_weight, norm.eps) if norm else (q, k, 0.0)
    _rotary_kernel[(tokens,)](
        q, k, cos, sin, q_weight, k_weight, eps, num_q_heads, num_k_heads,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0),
        Q_PAD=triton.next_power_of_2(num_q_heads), K_PAD=triton.next_power_of_2(num_k_heads), HALF=half,
        HALF_PAD=triton.next_power_of_2(half), NORM=norm is not None, num_warps=4,
    )
