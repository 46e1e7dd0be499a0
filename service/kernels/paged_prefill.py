"""Prefill attention over a paged KV cache: a Triton flash-attention kernel and a PyTorch reference.

A prefill step packs the new tokens of several sequences (whole prompts, or chunks of prompts whose
earlier tokens are already cached). Each new token attends causally to every cached token of its
sequence up to and including itself. The kernel streams K/V tiles through the block table with an online
softmax, so its memory is O(tokens), never O(tokens^2) as a materialised mask or score matrix would be.

Layouts:
  q                [num_tokens, num_heads, head_dim]: the new tokens, sequence after sequence
  k/v_cache        [num_blocks, block_size, num_kv_heads, head_dim]; the new tokens' K/V already written
  block_tables     [num_seqs, max_blocks] int32
  query_start_loc  [num_seqs + 1] int32: sequence i's tokens are q[query_start_loc[i]:query_start_loc[i+1]]
  context_lens     [num_seqs] int32: cached tokens after this step, the new ones included
"""

import torch
import triton
import triton.language as tl

from service.kernels.common import LOG2E, check_heads, check_kernel_operands, load_kv_tile


@triton.jit
def _online_softmax_step(q, k, v, m_i, l_i, acc, qk_scale, tokens, q_pos, valid, MASKED: tl.constexpr,
                         PRECISION: tl.constexpr):
    """One key tile of flash attention: the running max, sum and accumulator after it. MASKED: hide the
    tile's keys past each row's own position (and past the context)."""
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if MASKED:
        qk = tl.where(valid[None, :] & (tokens[None, :] <= q_pos[:, None]), qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


# The block table's row stride is its width, which changes with every batch's longest sequence: specialised
# on (Triton compiles a variant for 1 and for multiples of 16), it would compile up to three variants of each
# launch, at profiling time or in the middle of serving.
@triton.jit(do_not_specialize=["stride_bt"])
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, qsl_ptr, lens_ptr, out_ptr, qk_scale,
    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_bt, stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    tile = tl.program_id(1)
    head = tl.program_id(2)
    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    if tile * BLOCK_M >= q_len:
        return
    context_len = tl.load(lens_ptr + seq)
    kv_head = head // GROUP
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < q_len
    q = tl.load(q_ptr + (q_start + rows)[:, None].to(tl.int64) * stride_qt + head * stride_qh + dims[None, :],
                mask=row_ok[:, None], other=0.0)
    # Absolute positions of this tile's queries; padding rows past q_len get positions past the end and
    # are never stored. Token 0 is visible to every row, so each row's running max is finite after tile 0.
    q_pos = context_len - q_len + rows
    end = tl.minimum(context_len, context_len - q_len + (tile + 1) * BLOCK_M)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # Key tiles that end at or before the tile's first query position are visible to all of its rows: no mask
    # there, only on the tiles that cross the diagonal.
    unmasked_end = (context_len - q_len + tile * BLOCK_M + 1) // BLOCK_N * BLOCK_N
    for tile_start in range(0, unmasked_end, BLOCK_N):
        tokens = tile_start + cols
        k, v = load_kv_tile(k_ptr, v_ptr, bt_ptr + seq * stride_bt, tokens, cols < BLOCK_N, kv_head, dims,
                            stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, BLOCK_SIZE)
        m_i, l_i, acc = _online_softmax_step(q, k, v, m_i, l_i, acc, qk_scale, tokens, q_pos, tokens < end,
                                             False, PRECISION)
    for tile_start in range(unmasked_end, end, BLOCK_N):
        tokens = tile_start + cols
        valid = tokens < end
        k, v = load_kv_tile(k_ptr, v_ptr, bt_ptr + seq * stride_bt, tokens, valid, kv_head, dims,
                            stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, BLOCK_SIZE)
        m_i, l_i, acc = _online_softmax_step(q, k, v, m_i, l_i, acc, qk_scale, tokens, q_pos, valid,
                                             True, PRECISION)

    out = acc / l_i[:, None]
    tl.store(out_ptr + (q_start + rows)[:, None].to(tl.int64) * stride_ot + head * stride_oh + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def _check(q, k_cache, v_cache, block_tables, query_start_loc, context_lens):
    check_heads(q, k_cache, v_cache, "tokens")
    num_seqs = context_lens.shape[0]
    if block_tables.dim() != 2 or block_tables.shape[0] != num_seqs or query_start_loc.shape != (num_seqs + 1,):
        raise ValueError(f"block_tables must be [{num_seqs}, max_blocks] and query_start_loc [{num_seqs + 1}]; got "
                         f"{tuple(block_tables.shape)} and {tuple(query_start_loc.shape)}")


def paged_prefill_attention(q, k_cache, v_cache, block_tables, query_start_loc, context_lens, max_q_len: int,
                            scale: float, out=None, *, block_m=None, block_n=None, num_warps=None, num_stages=None):
    """Causal attention of each sequence's new tokens over its cached tokens; returns out [num_tokens, heads,
    head_dim]. max_q_len is the longest sequence's count of new tokens (it sizes the launch grid)."""
    _check(q, k_cache, v_cache, block_tables, query_start_loc, context_lens)
    num_tokens, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    if out is None:
        out = torch.empty_like(q)
    check_kernel_operands(q, k_cache, v_cache, out, "paged_prefill_attention_reference")
    num_seqs = context_lens.shape[0]
    if num_seqs == 0 or num_tokens == 0:
        return out
    # 64x64 tiles keep Q, K, V and the accumulator of head_dim <= 128 inside the register and shared-memory
    # budget of one SM; head_dim 256 halves the key tile. For head_dim 128, one warpgroup (4 warps) and 2
    # stages were the fastest of 36 launch settings over bench/prefill.py's cases on an H200 (1.32x SDPA's
    # time on contiguous K/V, geometric mean; 8 warps and 3 stages took 2.6x): prefill-h200-2026-12-02-sweep.json.
    block_m = block_m or 64
    block_n = block_n or (64 if head_dim <= 128 else 32)
    num_warps = num_warps or (4 if head_dim <= 128 else 8)
    if num_stages is None:
        num_stages = (1 if q.device.type != "cuda" else 2 if head_dim <= 128
                      else max(1, min(3, 96 * 1024 // (2 * block_n * head_dim * q.element_size()))))
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    grid = (num_seqs, triton.cdiv(max_q_len, block_m), num_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, query_start_loc, context_lens, out, scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_N=block_n, PRECISION=precision, num_warps=num_warps, num_stages=num_stages,
    )
    return out


def paged_prefill_attention_reference(q, k_cache, v_cache, block_tables, query_start_loc, context_lens, scale):
    """The same attention in plain PyTorch (fp32 math), one sequence at a time."""
    _check(q, k_cache, v_cache, block_tables, query_start_loc, context_lens)
    num_heads = q.shape[1]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    starts = query_start_loc.tolist()
    for i, context_len in enumerate(context_lens.tolist()):
        lo, hi = starts[i], starts[i + 1]
        positions = torch.arange(context_len, device=q.device)
        slots = block_tables[i].long()[positions // block_size] * block_size + positions % block_size
        k = k_cache.flatten(0, 1)[slots].float().repeat_interleave(num_heads // num_kv_heads, dim=1)
        v = v_cache.flatten(0, 1)[slots].float().repeat_interleave(num_heads // num_kv_heads, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[lo:hi].float(), k) * scale
        q_pos = torch.arange(context_len - (hi - lo), context_len, device=q.device)
        scores = scores.masked_fill(positions[None, None, :] > q_pos[None, :, None], float("-inf"))
        out[lo:hi] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(q.dtype)
    return out
