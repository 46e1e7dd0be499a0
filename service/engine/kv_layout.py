"""The KV cache's layout, computed once by the runner: everything memory planning needs to turn bytes into
blocks and back, as values (no runner, no tensors)."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class KVLayout:
    block_size: int  # tokens per block
    bytes_per_block: int  # 2 (K and V) x layers x block_size x kv_heads x head_dim x dtype size
    max_blocks_per_seq: int  # blocks one max_model_len sequence fills
    max_model_len: int
    max_num_seqs: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def block_shape(self) -> tuple[int, int, int]:
        """One layer's K (or V) cache is [num_blocks, *block_shape]."""
        return (self.block_size, self.num_kv_heads, self.head_dim)

    @property
    def min_num_blocks(self) -> int:
        """One max_model_len sequence plus the reserved null block: the smallest cache that can serve."""
        return self.max_blocks_per_seq + 1

    @property
    def useful_bytes(self) -> int:
        """More KV cache than max_num_seqs sequences of max_model_len can fill is never allocated."""
        return (self.max_num_seqs * self.max_blocks_per_seq + 1) * self.bytes_per_block

    def num_blocks_for(self, kv_cache_memory_bytes: int) -> int:
        return kv_cache_memory_bytes // self.bytes_per_block

    def blocks_for(self, lens: list[int]) -> int:
        """Blocks that sequences of these lengths take, plus the reserved one."""
        return sum(-(-n // self.block_size) for n in lens) + 1
