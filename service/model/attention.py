"""Attention over the paged KV cache.

A batch's tokens are packed: first one token for each decoding sequence, then the new tokens of each
prefilling sequence (whole prompts or chunks of them). New K/V go into the cache by slot mapping first;
then attention reads the cache through the block tables. On CUDA, Triton kernels: split-K for decodes, a
flash-attention prefill kernel whose memory stays O(tokens). Elsewhere, a reference: SDPA over the
sequences padded to one batch, with an explicit causal mask that accounts for the context already cached."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class GroupMetadata:
    """One padded SDPA batch: queries scattered into [num_seqs, max_q_len] by q_index; keys are the
    first max_k_len cached tokens of each block table row."""

    block_tables: torch.Tensor  # [num_seqs, blocks] int32
    q_index: torch.Tensor  # [num_tokens] int64 positions into the flattened [num_seqs * max_q_len]
    mask: torch.Tensor  # [num_seqs, 1, max_q_len, max_k_len] bool, True = attend
    max_q_len: int
    max_k_len: int


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot of each new token's K/V
    num_decode_tokens: int
    decode_block_tables: torch.Tensor | None = None  # [num_decodes, max_blocks] int32 (Triton path)
    decode_context_lens: torch.Tensor | None = None  # [num_decodes] int32 (Triton path)
    decode_group: GroupMetadata | None = None  # reference path
    prefill_block_tables: torch.Tensor | None = None  # [num_prefills, max_blocks] int32 (Triton path)
    prefill_query_start_loc: torch.Tensor | None = None  # [num_prefills + 1] int32 (Triton path)
    prefill_context_lens: torch.Tensor | None = None  # [num_prefills] int32, new tokens included (Triton path)
    prefill_max_q_len: int = 0  # (Triton path)
    prefill_group: GroupMetadata | None = None  # reference path


def write_kv(k, v, k_cache, v_cache, slot_mapping):
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def padded_sdpa(q, k_cache, v_cache, group: GroupMetadata, scale: float) -> torch.Tensor:
    num_seqs = group.block_tables.shape[0]
    _, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    padded_q = q.new_zeros(num_seqs * group.max_q_len, num_heads, head_dim)
    padded_q[group.q_index] = q
    padded_q = padded_q.view(num_seqs, group.max_q_len, num_heads, head_dim).transpose(1, 2)
    num_blocks = -(-group.max_k_len // block_size)
    tables = group.block_tables[:, :num_blocks]

    def gather(cache):
        kv = cache[tables].view(num_seqs, num_blocks * block_size, num_kv_heads, head_dim)[:, : group.max_k_len]
        return kv.transpose(1, 2).repeat_interleave(num_heads // num_kv_heads, dim=1)

    out = F.scaled_dot_product_attention(padded_q, gather(k_cache), gather(v_cache), attn_mask=group.mask, scale=scale)
    return out.transpose(1, 2).reshape(-1, num_heads, head_dim)[group.q_index]


def paged_attention(q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
    return attend_cached(q, k_cache, v_cache, meta, scale)


def attend_cached(q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Attention of q over the cache, which already holds the new tokens' K/V."""
    nd = meta.num_decode_tokens
    if nd == q.shape[0] and meta.decode_group is None:
        # The pure-decode fast path (and the only one inside CUDA graphs).
        return decode_attention(q, k_cache, v_cache, meta.decode_block_tables, meta.decode_context_lens, scale)
    out = torch.empty_like(q)
    if nd:
        if meta.decode_group is not None:
            out[:nd] = padded_sdpa(q[:nd], k_cache, v_cache, meta.decode_group, scale)
        else:
            out[:nd] = decode_attention(q[:nd], k_cache, v_cache, meta.decode_block_tables,
                                        meta.decode_context_lens, scale)
    if meta.prefill_group is not None:
        out[nd:] = padded_sdpa(q[nd:], k_cache, v_cache, meta.prefill_group, scale)
    elif nd < q.shape[0]:
        from service.kernels.paged_prefill import paged_prefill_attention

        paged_prefill_attention(q[nd:], k_cache, v_cache, meta.prefill_block_tables, meta.prefill_query_start_loc,
                                meta.prefill_context_lens, meta.prefill_max_q_len, scale, out=out[nd:])
    return out


def decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale):
    from service.kernels.paged_attention import paged_decode_attention

    return paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)
