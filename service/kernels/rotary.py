"""The rotary embedding on q and k in one kernel for both (PyTorch's q * cos + rotate_half(q) * sin launches
five kernels for each), with Qwen3's per-head RMSNorm of q and k (qk_norm, which comes before the rotation)
fused in when its weights are given, and the new K and V written into the paged KV cache when a CacheWrite is
given (instead of attention.write_kv's two index_copy kernels).

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


@dataclass(frozen=True, slots=True)
class CacheWrite:
    """Where the rotated K and V go: the layer's caches [blocks, block_size, kv_heads, head_dim], at each
    token's slot (block * block_size + offset)."""

    v: torch.Tensor  # [tokens, kv_heads, head_dim]
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    slot_mapping: torch.Tensor  # [tokens] int64


@triton.jit
def _rotate_heads(src, dst, src_stride_h, dst_stride_h, num_heads, cos, sin, w_ptr, eps, dims, dims_ok,
                  HEADS_PAD: tl.constexpr, HALF: tl.constexpr, NORM: tl.constexpr):
    heads = tl.arange(0, HEADS_PAD)
    ok = (heads[:, None] < num_heads) & dims_ok[None, :]
    first = src + heads[:, None] * src_stride_h + dims[None, :]
    dtype = src.dtype.element_ty
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
    out = dst + heads[:, None] * dst_stride_h + dims[None, :]
    tl.store(out, out1.to(dtype).to(dst.dtype.element_ty), mask=ok)
    tl.store(out + HALF, out2.to(dtype).to(dst.dtype.element_ty), mask=ok)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, v_ptr, kc_ptr, vc_ptr, slots_ptr, eps,
                   num_q_heads, num_k_heads,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_cos, stride_sin, stride_vt, stride_vh,
                   stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct, stride_vch,
                   Q_PAD: tl.constexpr, K_PAD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr,
                   NORM: tl.constexpr, WRITE_CACHE: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    dims = tl.arange(0, HALF_PAD)
    dims_ok = dims < HALF
    cos = tl.load(cos_ptr + token * stride_cos + dims, mask=dims_ok, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + token * stride_sin + dims, mask=dims_ok, other=0.0).to(tl.float32)[None, :]
    q = q_ptr + token * stride_qt
    _rotate_heads(q, q, stride_qh, stride_qh, num_q_heads, cos, sin, qw_ptr, eps, dims, dims_ok, Q_PAD, HALF, NORM)
    k = k_ptr + token * stride_kt
    if WRITE_CACHE:
        slot = tl.load(slots_ptr + token)
        block, offset = slot // BLOCK_SIZE, slot % BLOCK_SIZE
        # k goes straight into the cache (attention reads it only there); v is copied beside it.
        k_dst = kc_ptr + block * stride_kcb + offset * stride_kct
        _rotate_heads(k, k_dst, stride_kh, stride_kch, num_k_heads, cos, sin, kw_ptr, eps, dims, dims_ok,
                      K_PAD, HALF, NORM)
        heads = tl.arange(0, K_PAD)
        ok = (heads[:, None] < num_k_heads) & dims_ok[None, :]
        v_src = v_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :]
        v_dst = vc_ptr + block * stride_vcb + offset * stride_vct + heads[:, None] * stride_vch + dims[None, :]
        v_dtype = vc_ptr.dtype.element_ty
        tl.store(v_dst, tl.load(v_src, mask=ok).to(v_dtype), mask=ok)
        tl.store(v_dst + HALF, tl.load(v_src + HALF, mask=ok).to(v_dtype), mask=ok)
    else:
        _rotate_heads(k, k, stride_kh, stride_kh, num_k_heads, cos, sin, kw_ptr, eps, dims, dims_ok,
                      K_PAD, HALF, NORM)


def _check(q, k, cos, sin, cache):
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
    if cache is not None:
        block_shape = (k.shape[1], head_dim)
        if (cache.v.shape != k.shape or cache.v.stride(2) != 1 or cache.slot_mapping.shape != (tokens,)
                or cache.k_cache.shape != cache.v_cache.shape or cache.k_cache.shape[2:] != block_shape
                or cache.k_cache.stride(3) != 1 or cache.v_cache.stride(3) != 1):
            raise ValueError(f"expected v like k {tuple(k.shape)}, slot_mapping [{tokens}] and K/V caches "
                             f"[blocks, block_size, {block_shape[0]}, {block_shape[1]}]; got v {tuple(cache.v.shape)}, "
                             f"slot_mapping {tuple(cache.slot_mapping.shape)}, caches {tuple(cache.k_cache.shape)} "
                             f"and {tuple(cache.v_cache.shape)}")


def rotary_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            norm: HeadNorm | None = None, cache: CacheWrite | None = None) -> None:
    """Rotates q in place (after RMSNorm of each head when norm is given), and k the same way: in place, or
    into cache.k_cache with v copied into cache.v_cache when cache is given (k itself is then left as it was)."""
    _check(q, k, cos, sin, cache)
    tokens, num_q_heads, head_dim = q.shape
    if not tokens:
        return
    num_k_heads, half = k.shape[1], head_dim // 2
    q_pad, half_pad = triton.next_power_of_2(num_q_heads), triton.next_power_of_2(half)
    cos, sin = cos.reshape(tokens, head_dim), sin.reshape(tokens, head_dim)
    q_weight, k_weight, eps = (norm.q_weight, norm.k_weight, norm.eps) if norm else (q, k, 0.0)
    v, k_cache, v_cache, slots = (cache.v, cache.k_cache, cache.v_cache, cache.slot_mapping) if cache else (k, k, k, cos)
    cache_strides = (*k_cache.stride()[:3], *v_cache.stride()[:3]) if cache else (0,) * 6
    _rotary_kernel[(tokens,)](
        q, k, cos, sin, q_weight, k_weight, v, k_cache, v_cache, slots, eps, num_q_heads, num_k_heads,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0), v.stride(0), v.stride(1),
        *cache_strides,
        Q_PAD=q_pad, K_PAD=triton.next_power_of_2(num_k_heads), HALF=half, HALF_PAD=half_pad,
        NORM=norm is not None, WRITE_CACHE=cache is not None, BLOCK_SIZE=k_cache.shape[1] if cache else 1,
        num_warps=min(16, max(4, q_pad * half_pad // 512)),  # 16 values of each q tile a thread at most
    )
