"""A scheduled batch as host arrays: one Python pass over the sequences gathers their tokens, offsets and
block tables, then positions, slot mapping and the padded block table come from numpy over the whole batch
(not numpy per sequence), which is most of the host time of a step at large batches."""

from dataclasses import dataclass
from itertools import chain

import numpy as np

from service.engine.block_manager import NULL_BLOCK
from service.engine.scheduler import ScheduledSeq


@dataclass(slots=True)
class BatchArrays:
    input_ids: np.ndarray  # [tokens] int64, the batch's new tokens packed in batch order
    positions: np.ndarray  # [tokens] int64
    slot_mapping: np.ndarray  # [tokens] int64: cache slot of each new token's K/V
    starts: np.ndarray  # [seqs] int64: tokens already computed
    q_lens: np.ndarray  # [seqs] int64: tokens computed this step
    block_tables: np.ndarray  # [seqs, longest table] int32, padded with NULL_BLOCK
    table_lens: np.ndarray  # [seqs] int64
    logits_indices: np.ndarray  # [sampling seqs] int64: each sampling sequence's last token

    def tables(self, rows: np.ndarray, width: int | None = None) -> np.ndarray:
        """The block tables of `rows`, `width` columns (default: their longest table), NULL_BLOCK padded."""
        width = int(self.table_lens[rows].max()) if width is None else width
        have = min(width, self.block_tables.shape[1])
        if have == width:
            return np.ascontiguousarray(self.block_tables[rows, :width])
        out = np.full((len(rows), width), NULL_BLOCK, dtype=np.int32)
        out[:, :have] = self.block_tables[rows, :have]
        return out


def padded_block_tables(tables: list[list[int]], lens: np.ndarray) -> np.ndarray:
    """Rows of `tables`, NULL_BLOCK padded to the longest, in one numpy assignment."""
    width = int(lens.max(initial=0))
    if len(tables) and width == int(lens.min()):  # one conversion when every table has the same length
        return np.array(tables, dtype=np.int32).reshape(len(tables), width)
    out = np.full((len(tables), width), NULL_BLOCK, dtype=np.int32)
    flat = np.fromiter(chain.from_iterable(tables), dtype=np.int32, count=int(lens.sum()))
    out[np.arange(width)[None, :] < lens[:, None]] = flat  # row-major, so each row's blocks in order
    return out


def token_offsets(q_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every packed token: the index of its sequence, and its offset among that sequence's new tokens."""
    ends = np.cumsum(q_lens)
    if len(ends) and ends[-1] == len(q_lens):  # pure decode: one token a sequence
        return np.arange(len(q_lens)), np.zeros(len(q_lens), dtype=np.int64)
    seq_of = np.repeat(np.arange(len(q_lens)), q_lens)
    return seq_of, np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - q_lens, q_lens)


def batch_arrays(batch: list[ScheduledSeq], block_size: int, ahead: int = 0) -> BatchArrays:
    """ahead=1: a decode step queued before the step in flight has been read back; every sequence is one
    token further than its state says, and that token's id is still on the device (input_ids are 0 here)."""
    input_ids: list[int] = []
    starts, q_lens, samples, tables = [], [], [], []
    for s in batch:
        seq, n = s.seq, s.num_new_tokens
        start = seq.num_computed_tokens + ahead
        input_ids += seq.token_ids(start, start + n) if not ahead else [0] * n
        starts.append(start)
        q_lens.append(n)
        samples.append(start + n == seq.num_tokens + ahead)
        tables.append(seq.block_table)
    starts_a, q_lens_a = np.array(starts, dtype=np.int64), np.array(q_lens, dtype=np.int64)
    table_lens = np.fromiter(map(len, tables), dtype=np.int64, count=len(tables))
    block_tables = padded_block_tables(tables, table_lens)
    seq_of, offsets = token_offsets(q_lens_a)
    positions = starts_a[seq_of] + offsets
    slot_mapping = block_tables[seq_of, positions // block_size].astype(np.int64) * block_size + positions % block_size
    logits_indices = (np.cumsum(q_lens_a) - 1)[np.array(samples, dtype=bool)]
    return BatchArrays(np.array(input_ids, dtype=np.int64), positions, slot_mapping, starts_a, q_lens_a,
                       block_tables, table_lens, logits_indices)
