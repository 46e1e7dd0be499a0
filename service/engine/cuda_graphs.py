"""CUDA graphs for pure-decode batches: one graph per capture size, captured largest first into one shared
memory pool; a batch replays the smallest graph that fits it, with padded rows writing to the null block.
Every graph copies its logits into one shared output buffer, so the pool holds one batch's temporaries
rather than every size's logits (about 1.2 GB for 20 sizes of a 128K vocabulary)."""

import torch

from service.engine.batch_arrays import batch_arrays
from service.engine.block_manager import NULL_BLOCK
from service.engine.scheduler import ScheduledSeq
from service.model.attention import AttentionMetadata


class DecodeGraphs:
    def __init__(self, runner, sizes: list[int]):
        self.runner = runner
        self.sizes = sorted(sizes)
        max_bs, dev = self.sizes[-1], runner.device
        self.input_ids = torch.zeros(max_bs, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(max_bs, dtype=torch.int64, device=dev)
        self.slot_mapping = torch.zeros(max_bs, dtype=torch.int64, device=dev)
        # Full width: a graph's kernels are shaped for the longest sequence the engine allows.
        self.block_tables = torch.full((max_bs, runner.layout.max_blocks_per_seq), NULL_BLOCK, dtype=torch.int32,
                                       device=dev)
        self.context_lens = torch.ones(max_bs, dtype=torch.int32, device=dev)
        self.logits = torch.empty(max_bs, runner.model_config.vocab_size, dtype=runner.dtype, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = None

    def _forward(self, bs: int) -> torch.Tensor:
        meta = AttentionMetadata(slot_mapping=self.slot_mapping[:bs], num_decode_tokens=bs,
                                 decode_block_tables=self.block_tables[:bs], decode_context_lens=self.context_lens[:bs])
        return self.runner.model(self.input_ids[:bs], self.positions[:bs], self.runner.kv_caches, meta,
                                 fused=self.runner.use_fused_kernels)

    @torch.inference_mode()
    def capture(self) -> None:
        for bs in reversed(self.sizes):
            self._forward(bs)  # warm up: compiles Triton kernels and sets up cuBLAS outside the graph
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.logits[:bs].copy_(self._forward(bs))
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs] = graph
        torch.cuda.synchronize()

    def can_run(self, num_seqs: int) -> bool:
        return num_seqs <= self.sizes[-1]

    def run(self, batch: list[ScheduledSeq], ahead: int = 0, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids: the batch's tokens on the device, for a step queued ahead (batch_arrays' `ahead`).
        Every copy is queued on the stream, so a step queued while another runs changes no buffer that one
        still reads."""
        n = len(batch)
        bs = next(s for s in self.sizes if s >= n)
        block_size = self.runner.layout.block_size
        arrays = batch_arrays(batch, block_size, ahead)
        width = arrays.block_tables.shape[1]
        if input_ids is not None:
            self.input_ids[:n].copy_(input_ids)
        else:
            self.input_ids[:n].copy_(torch.from_numpy(arrays.input_ids), non_blocking=True)
        self.positions[:n].copy_(torch.from_numpy(arrays.positions), non_blocking=True)
        self.slot_mapping[:n].copy_(torch.from_numpy(arrays.slot_mapping), non_blocking=True)
        self.context_lens[:n].copy_(torch.from_numpy(arrays.positions + 1), non_blocking=True)
        self.block_tables[:n, :width].copy_(torch.from_numpy(arrays.block_tables), non_blocking=True)
        if bs > n:  # padded rows: one token of context, K/V written into the null block
            self.slot_mapping[n:bs].fill_(NULL_BLOCK * block_size)
            self.context_lens[n:bs].fill_(1)
        self.graphs[bs].replay()
        return self.logits[:n]
