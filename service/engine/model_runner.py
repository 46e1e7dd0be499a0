"""Turns a scheduled batch into tensors, runs the model (eagerly, or by CUDA-graph replay for pure
decode batches) and samples. The runner owns the KV cache and the CUDA graphs: it computes their layout
once, and allocates, frees and captures them only through its own methods."""

import os

import numpy as np
import torch

from service.config import EngineConfig
from service.errors import ConfigError
from service.engine.batch_arrays import BatchArrays, batch_arrays, token_offsets
from service.engine.block_manager import BlockManager
from service.engine.kv_layout import KVLayout
from service.engine.sampler import DeviceSample, SamplerOutput, SamplingBatch, sample, sample_on_device
from service.engine.sampling_params import MAX_LOGPROBS, SamplingParams
from service.engine.scheduler import ScheduledSeq
from service.engine.sequence import Sequence
from service.model.attention import AttentionMetadata, GroupMetadata
from service.model.loader import LoadedModel, load_model

# The sampler's most expensive path: temperature, the top-k/top-p sort of [rows, vocab] logits (in float32) with int64
# indices, then the log-softmax and top-N of logprobs beside the sampling temporaries.
PROFILE_SAMPLING = SamplingParams(max_tokens=1, temperature=1.0, top_k=50, top_p=0.9, logprobs=MAX_LOGPROBS)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """auto: cuda when there is one, else cpu. An explicit cuda never falls back: a pod that holds a GPU must
    not serve on its CPU (a container runtime without the GPU hooks looks exactly like that)."""
    try:
        device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)
    except RuntimeError:
        raise ConfigError(f"device={name[:40]!r} (--device / KVMEMO_DEVICE) is not auto, cpu or cuda[:N]") from None
    if device.type == "cuda":
        require_cuda(name, device)
    if device.type == "cuda" and device.index is None:  # an explicit index, so set_device and friends accept it
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def require_cuda(name: str, device: torch.device) -> None:
    """Raises ConfigError saying what was found when `device` cannot be used."""
    if torch.version.cuda is None:
        found = f"this torch ({torch.__version__}) is built without CUDA"
    elif not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        found = ("no CUDA device is visible (is the pod's runtime the NVIDIA one? see runtimeClassName"
                 + (f"; CUDA_VISIBLE_DEVICES={visible[:40]!r}" if visible is not None else "") + ")")
    elif device.index is not None and device.index >= torch.cuda.device_count():
        found = f"only {torch.cuda.device_count()} CUDA device(s) are visible"
    else:
        return
    raise ConfigError(f"device={name} (--device / KVMEMO_DEVICE) needs CUDA, but {found}; "
                      "use --device=auto or cpu to run on the CPU")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


class ModelRunner:
    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None):
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.loaded = loaded or load_model(config.model, self.dtype, self.device, config.weights_seed)
        self.model = self.loaded.model
        self.model_config = self.loaded.config
        self.max_model_len = min(config.max_model_len or self.model_config.max_position_embeddings,
                                 self.model_config.max_position_embeddings)
        self.model.init_rope(self.max_model_len, self.device, self.dtype)
        cfg, element = self.model_config, torch.tensor([], dtype=self.dtype).element_size()
        self.layout = KVLayout(
            block_size=config.block_size, bytes_per_block=cfg.kv_bytes_per_token * config.block_size * element,
            max_blocks_per_seq=-(-self.max_model_len // config.block_size), max_model_len=self.max_model_len,
            max_num_seqs=config.max_num_seqs, num_layers=cfg.num_hidden_layers, num_kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim, dtype=self.dtype,
        )
        self.use_triton = self.device.type == "cuda"
        # Triton's interpreter can run them on the CPU too, which is how the tests check them there.
        self.use_fused_kernels = self.device.type == "cuda" and config.fused_kernels
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer (K, V), once allocated
        self.graphs = None  # service.engine.cuda_graphs.DecodeGraphs, once captured

    # --- what the runner owns: its KV cache and its CUDA graphs -------------------------------------
    @property
    def num_kv_blocks(self) -> int:
        """Blocks in the allocated KV cache; 0 before allocate_kv_cache."""
        return self.kv_caches[0][0].shape[0] if self.kv_caches else 0

    def allocate_kv_cache(self, num_blocks: int) -> None:
        shape = (num_blocks, *self.layout.block_shape)
        self.kv_caches = [
            (torch.zeros(shape, dtype=self.dtype, device=self.device),
             torch.zeros(shape, dtype=self.dtype, device=self.device))
            for _ in range(self.layout.num_layers)
        ]

    def free_kv_cache(self) -> None:
        """Drops the cache and the graphs captured over it."""
        self.kv_caches = []
        self.graphs = None

    @property
    def uses_graphs(self) -> bool:
        return self.device.type == "cuda" and not self.config.enforce_eager

    def capture_graphs(self, sizes: list[int]) -> None:
        """Captures the pure-decode CUDA graphs over the allocated KV cache; run() replays them from then on."""
        from service.engine.cuda_graphs import DecodeGraphs

        graphs = DecodeGraphs(self, sizes)
        graphs.capture()
        self.graphs = graphs

    @torch.inference_mode()
    def dummy_run(self, lens: list[int], decodes: int = 0) -> None:
        """One step of dummy requests through the allocated KV cache, the kind serving runs: prefills of `lens`
        tokens beside `decodes` sequences that decode one token, every one sampled the most expensive way
        (PROFILE_SAMPLING), so that the sampler works on the step's own logits, in the memory the forward left
        behind. A step of fewer than max_num_seqs sampling rows is followed by a sampler pass over that many."""
        blocks = BlockManager(self.num_kv_blocks, self.layout.block_size)
        vocab = self.model_config.vocab_size
        batch = []
        for i, n in enumerate(lens):
            seq = Sequence(f"dummy-{i}", [i % vocab] * n, PROFILE_SAMPLING)
            blocks.allocate(seq, n)
            batch.append(ScheduledSeq(seq, n))
        if decodes:
            # One token cached and one new, through one shared block table as wide as the KV cache left allows
            # (a max_model_len sequence's at most): the decode kernel is launched as for long sequences, and a
            # CUDA graph's full-width tables, while only one sequence's blocks are taken.
            table = Sequence("dummy-decode-blocks", [], PROFILE_SAMPLING)
            blocks.allocate(table, min(self.layout.max_blocks_per_seq, blocks.num_free_blocks) * self.layout.block_size)
            for i in range(decodes):
                seq = Sequence(f"dummy-decode-{i}", [i % vocab] * 2, PROFILE_SAMPLING, num_computed_tokens=1,
                               block_table=list(table.block_table))
                batch.append(ScheduledSeq(seq, 1))
        sampling, _ = self.run(batch)
        rows = self.layout.max_num_seqs
        if len(sampling) < rows:
            logits = torch.randn(rows, vocab, device=self.device, dtype=self.dtype)
            sample(logits, SamplingBatch([PROFILE_SAMPLING] * rows, [0] * rows))

    # --- one step -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, batch: list[ScheduledSeq]) -> tuple[list[ScheduledSeq], SamplerOutput]:
        """Runs the model over the batch; returns the sequences that sample and one token for each, in order."""
        sampling, on_device = self.launch(batch)
        return sampling, on_device.to_host() if on_device is not None else SamplerOutput([], [])

    @torch.inference_mode()
    def launch(self, batch: list[ScheduledSeq],
               after: torch.Tensor | None = None) -> tuple[list[ScheduledSeq], DeviceSample | None]:
        """Queues the model and the sampler over the batch without waiting for the GPU: returns the
        sequences that sample, in order, and their tokens still on the device (None when none samples).

        after: for a pure-decode batch queued before the step in flight is read back, that step's sampled
        ids on the device, one per sequence of the batch in its order; each sequence is one token ahead of
        its state."""
        ahead = 0 if after is None else 1
        if ahead:
            assert all(s.num_new_tokens == 1 for s in batch) and len(after) == len(batch)
        else:
            batch = sorted(batch, key=lambda s: s.num_new_tokens > 1)  # decodes first, then prefills
        sampling = [s for s in batch if s.samples]  # ahead shifts both sides alike
        is_decode_only = all(s.num_new_tokens == 1 for s in batch)
        if is_decode_only and self.graphs is not None and self.graphs.can_run(len(batch)):
            logits = self.graphs.run(batch, ahead, after)
        else:
            input_ids, positions, meta, logits_indices = self.prepare(batch, ahead)
            if after is not None:
                input_ids = after
            logits = self.model(input_ids, positions, self.kv_caches, meta, logits_indices,
                                fused=self.use_fused_kernels)
        if not sampling:
            return [], None
        params = SamplingBatch([s.seq.params for s in sampling],
                               [len(s.seq.output_token_ids) + ahead for s in sampling])
        return sampling, sample_on_device(logits, params)

    def prepare(self, batch: list[ScheduledSeq], ahead: int = 0):
        """The batch (decodes first) as device tensors: input ids, positions, attention metadata, and the
        packed index of each sampling sequence's last token."""
        arrays = batch_arrays(batch, self.layout.block_size, ahead)
        dev = self.device
        if len(arrays.input_ids) == len(batch):  # pure decode
            decodes, prefills = np.arange(len(batch)), np.arange(0)
        else:
            is_decode = arrays.q_lens == 1
            decodes, prefills = np.flatnonzero(is_decode), np.flatnonzero(~is_decode)
        meta = AttentionMetadata(slot_mapping=torch.from_numpy(arrays.slot_mapping).to(dev, non_blocking=True),
                                 num_decode_tokens=len(decodes))
        if len(decodes):
            if self.use_triton:
                meta.decode_block_tables = self.to_device(arrays.tables(decodes))
                meta.decode_context_lens = self.to_device((arrays.starts[decodes] + 1).astype(np.int32))
            else:
                meta.decode_group = self.group_metadata(arrays, decodes)
        if len(prefills) and self.use_triton:
            q_lens = arrays.q_lens[prefills].astype(np.int32)
            context_lens = arrays.starts[prefills].astype(np.int32) + q_lens
            meta.prefill_block_tables = self.to_device(arrays.tables(prefills))
            meta.prefill_query_start_loc = self.to_device(np.concatenate([[0], np.cumsum(q_lens, dtype=np.int32)]))
            meta.prefill_context_lens = self.to_device(context_lens)
            meta.prefill_max_q_len = int(q_lens.max())
        elif len(prefills):
            meta.prefill_group = self.group_metadata(arrays, prefills)
        return (self.to_device(arrays.input_ids), self.to_device(arrays.positions), meta,
                self.to_device(arrays.logits_indices))

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device, non_blocking=True)

    def group_metadata(self, arrays: BatchArrays, rows: np.ndarray) -> GroupMetadata:
        """The padded SDPA batch of `rows` of the batch (the reference attention path)."""
        q_lens, starts = arrays.q_lens[rows], arrays.starts[rows]
        k_lens = starts + q_lens
        max_q, max_k = int(q_lens.max()), int(k_lens.max())
        seq_of, offsets = token_offsets(q_lens)
        q_index = seq_of * max_q + offsets
        # Query row r of sequence i sits at absolute position starts[i] + r and sees keys 0..that position.
        q_pos = starts[:, None] + np.arange(max_q)[None, :]
        mask = np.arange(max_k)[None, None, :] <= q_pos[:, :, None]
        mask[:, :, 0] = True  # padded query rows see one key, so their (discarded) softmax is finite
        return GroupMetadata(
            block_tables=self.to_device(arrays.tables(rows, -(-max_k // self.layout.block_size))),
            q_index=self.to_device(q_index),
            mask=self.to_device(mask[:, None]),
            max_q_len=max_q,
            max_k_len=max_k,
        )
