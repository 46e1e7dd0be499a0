"""What the paged-attention kernels share: argument checks, and loading a K/V tile through a block table."""

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # the kernels fold scale * log2(e) into the scores and use exp2


@triton.jit
def load_kv_tile(k_ptr, v_ptr, table_row_ptr, tokens, valid, kv_head, dims,
                 stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, BLOCK_SIZE: tl.constexpr):
    """K and V [len(tokens), head_dim] of one KV head; a tile may span several cache blocks, and every token
    finds its block through the table. Invalid tokens load zeros."""
    block = tl.load(table_row_ptr + tokens // BLOCK_SIZE, mask=valid, other=0)
    block = block.to(tl.int64)  # num_blocks * block stride can pass 2**31 elements
    offset = tokens % BLOCK_SIZE
    k = tl.load(k_ptr + block[:, None] * stride_kb + offset[:, None] * stride_kt
                + kv_head * stride_kh + dims[None, :], mask=valid[:, None], other=0.0)
    v = tl.load(v_ptr + block[:, None] * stride_vb + offset[:, None] * stride_vt
                + kv_head * stride_vh + dims[None, :], mask=valid[:, None], other=0.0)
    return k, v


def check_heads(q, k_cache, v_cache, rows: str) -> None:
    """q [rows, heads, head_dim] against K/V caches [blocks, block_size, kv_heads, head_dim]."""
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"expected q [{rows}, heads, head_dim] and K/V caches [blocks, block_size, kv_heads, "
                         f"head_dim] of one shape; got q {tuple(q.shape)}, k {tuple(k_cache.shape)}, "
                         f"v {tuple(v_cache.shape)}")
    num_heads, head_dim = q.shape[1:]
    num_kv_heads, cache_dim = k_cache.shape[2:]
    if cache_dim != head_dim or num_heads % num_kv_heads:
        raise ValueError(f"q has {num_heads} heads of dim {head_dim}, the cache {num_kv_heads} KV heads of dim "
                         f"{cache_dim}; head dims must match and heads must be a multiple of KV heads")


def check_kernel_operands(q, k_cache, v_cache, out, reference: str) -> None:
    head_dim, block_size = q.shape[-1], k_cache.shape[1]
    if head_dim < 16 or head_dim & (head_dim - 1) or block_size & (block_size - 1):
        raise ValueError(f"head_dim ({head_dim}) must be a power of two >= 16 (tl.dot) and block_size "
                         f"({block_size}) a power of two; use {reference} otherwise")
    if any(t.stride(-1) != 1 for t in (q, k_cache, v_cache, out)):
        raise ValueError("q, k_cache, v_cache and out need a contiguous last (head_dim) dimension")
