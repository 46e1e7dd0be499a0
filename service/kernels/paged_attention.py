"""Decode attention over a paged KV cache: a Triton split-K kernel and a PyTorch reference.

Layouts (both paths):
  q            [num_seqs, num_heads, head_dim]
  k/v_cache    [num_blocks, block_size, num_kv_heads, head_dim]
  block_tables [num_seqs, max_blocks_per_seq] int32; entries past a sequence's length are never read
  context_lens [num_seqs] int32; tokens to attend to, the current one included (already in the cache)

The launch depends only on tensor shapes, never on the values in context_lens, so one call can be
captured in a CUDA graph and replayed with new lengths and block tables.
"""

import functools

import torch
import triton
import triton.language as tl

from service.kernels.common import LOG2E, check_heads, check_kernel_operands, load_kv_tile

# Work items the first kernel aims to spread over the device. Decode is bandwidth-bound: a few
# resident programs per SM keep enough loads in flight without making the reduction large.
_PROGRAMS_PER_SM = 2
_MAX_SPLITS = 64


# Lengths, split counts and the block table's width (its row stride) are not specialised on (Triton would
# compile a variant for each value that is 1 or a multiple of 16), so every capture size of a model and every
# eager batch, whatever its longest sequence, share two compiled split kernels and one reduce kernel.
@triton.jit(do_not_specialize=["split_len", "num_splits", "stride_bt"])
def _split_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, lens_ptr, m_ptr, l_ptr, acc_ptr, out_ptr,
    qk_scale, split_len, num_splits,
    stride_qs, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_bt, stride_os, stride_oh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr, DIRECT: tl.constexpr, PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    rows = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, HEAD_DIM)
    cols = tl.arange(0, TILE_N)
    heads = kv_head * GROUP + rows
    # All query heads that share this KV head form the rows of one tl.dot, so each K/V tile is read
    # once per group; rows past GROUP are zero padding up to the 16 rows tl.dot needs.
    q = tl.load(q_ptr + seq * stride_qs + heads[:, None] * stride_qh + dims[None, :],
                mask=rows[:, None] < GROUP, other=0.0)

    context_len = tl.load(lens_ptr + seq)
    start = split * split_len
    end = tl.minimum(start + split_len, context_len)
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    for tile_start in range(start, end, TILE_N):
        tokens = tile_start + cols
        valid = tokens < end
        k, v = load_kv_tile(k_ptr, v_ptr, bt_ptr + seq * stride_bt, tokens, valid, kv_head, dims,
                            stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, BLOCK_SIZE)
        # Scores live in the log2 domain (scale * log2(e) folded in) so the softmax uses exp2.
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        qk = tl.where(valid[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))  # finite: every tile holds at least one token
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    head_ok = rows[:, None] < GROUP
    if DIRECT:
        # One split covers the whole sequence: normalise here and skip the reduction kernel.
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + seq * stride_os + heads[:, None] * stride_oh + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=head_ok)
    else:
        # An empty split (past context_len) stores max -inf, sum 0, acc 0; the reducer weighs it 0.
        part = (seq * tl.num_programs(1) * GROUP + heads) * num_splits + split
        tl.store(m_ptr + part, m_i, mask=rows < GROUP)
        tl.store(l_ptr + part, l_i, mask=rows < GROUP)
        tl.store(acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=head_ok)


@triton.jit(do_not_specialize=["num_splits"])
def _reduce_kernel(
    m_ptr, l_ptr, acc_ptr, out_ptr, num_splits, stride_os, stride_oh,
    HEAD_DIM: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, HEAD_DIM)
    ok = splits < num_splits
    part = (seq * tl.num_programs(1) + head) * num_splits + splits
    m = tl.load(m_ptr + part, mask=ok, other=float("-inf"))
    l = tl.load(l_ptr + part, mask=ok, other=0.0)
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)  # context_len 0: zeros, not NaN
    w = tl.exp2(m - m_max)
    total = tl.sum(w * l, 0)
    acc = tl.load(acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], mask=ok[:, None], other=0.0)
    out = tl.sum(acc * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq * stride_os + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty))


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # an H100's count, so the interpreter exercises the same split choices
    return torch.cuda.get_device_properties(device).multi_processor_count


def _split_plan(num_seqs, num_kv_heads, max_tokens, tile_n, device, num_splits=None):
    """(num_splits, split_len in tokens, a multiple of tile_n) from static shapes alone."""
    tiles = max(1, triton.cdiv(max_tokens, tile_n))
    if num_splits is None:
        wanted = triton.cdiv(_PROGRAMS_PER_SM * _sm_count(device), num_seqs * num_kv_heads)
        num_splits = min(wanted, _MAX_SPLITS)
    tiles_per_split = triton.cdiv(tiles, max(1, min(num_splits, tiles)))
    return triton.cdiv(tiles, tiles_per_split), tiles_per_split * tile_n


def _check(q, k_cache, v_cache, block_tables, context_lens):
    check_heads(q, k_cache, v_cache, "seqs")
    num_seqs = q.shape[0]
    if block_tables.dim() != 2 or block_tables.shape[0] != num_seqs or context_lens.shape != (num_seqs,):
        raise ValueError(f"block_tables must be [{num_seqs}, max_blocks] and context_lens "
                         f"[{num_seqs}]; got {tuple(block_tables.shape)} and {tuple(context_lens.shape)}")


def paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale, out=None, *,
                           num_splits=None, tile_n=None, num_warps=4, num_stages=None):
    """Attention of one query token per sequence over its cached tokens; returns out.

    The keyword-only arguments override the launch heuristics (for benchmarks and tests).
    """
    _check(q, k_cache, v_cache, block_tables, context_lens)
    num_seqs, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    if out is None:
        out = torch.empty_like(q)
    check_kernel_operands(q, k_cache, v_cache, out, "paged_decode_attention_reference")
    if num_seqs == 0:
        return out
    group = num_heads // num_kv_heads
    if tile_n is None:  # 16 KB of K and of V per step in bf16; a tile may span blocks or part of one
        tile_n = 64 if head_dim <= 128 else 32
    if num_stages is None:  # as many K/V tiles in flight as fit in ~160 KB of shared memory, up to 3
        num_stages = max(1, min(3, 160 * 1024 // (2 * tile_n * head_dim * q.element_size())))
    max_tokens = block_tables.shape[1] * block_size
    splits, split_len = _split_plan(num_seqs, num_kv_heads, max_tokens, tile_n, q.device, num_splits)
    direct = splits == 1
    if direct:
        m = l = acc = out  # unused by the kernel when DIRECT
    else:
        m = torch.empty(num_seqs, num_heads, splits, device=q.device, dtype=torch.float32)
        l = torch.empty_like(m)
        acc = torch.empty(num_seqs, num_heads, splits, head_dim, device=q.device, dtype=torch.float32)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"  # tf32 would cost fp32 inputs accuracy
    _split_kernel[(num_seqs, num_kv_heads, splits)](
        q, k_cache, v_cache, block_tables, context_lens, m, l, acc, out,
        scale * LOG2E, split_len, splits,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, TILE_N=tile_n, DIRECT=direct, PRECISION=precision,
        num_warps=num_warps, num_stages=num_stages,
    )
    if not direct:
        splits_pad = max(_MAX_SPLITS, triton.next_power_of_2(splits))  # one variant for every split count
        _reduce_kernel[(num_seqs, num_heads)](
            m, l, acc, out, splits, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, SPLITS_PAD=splits_pad,
            num_warps=4 if splits_pad * head_dim <= 8192 else 8,
        )
    return out


def paged_decode_attention_reference(q, k_cache, v_cache, block_tables, context_lens, scale, out=None):
    """The same attention in plain PyTorch (fp32 math): gather through the block table, then softmax."""
    _check(q, k_cache, v_cache, block_tables, context_lens)
    num_seqs, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    positions = torch.arange(block_tables.shape[1] * block_size, device=q.device)
    valid = positions[None, :] < context_lens[:, None].long()
    slots = block_tables.long()[:, positions // block_size] * block_size + positions % block_size
    slots = torch.where(valid, slots, 0)  # entries past a sequence's length may be garbage
    k = k_cache.flatten(0, 1)[slots].float()  # [seqs, tokens, kv_heads, head_dim]
    v = v_cache.flatten(0, 1)[slots].float()
    qg = q.float().reshape(num_seqs, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = torch.einsum("skgd,stkd->skgt", qg, k) * scale
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # context_len 0 gives zeros
    result = torch.einsum("skgt,stkd->skgd", probs, v).reshape(num_seqs, num_heads, head_dim)
    if out is None:
        return result.to(q.dtype)
    return out.copy_(result)
