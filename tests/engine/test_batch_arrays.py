"""batch_arrays (the whole batch in numpy) equals the per-sequence computation it replaced, for any mix of
decodes, prefills and chunks after cached context."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.engine.batch_arrays import batch_arrays
from service.engine.block_manager import NULL_BLOCK
from service.engine.sampling_params import SamplingParams
from service.engine.scheduler import ScheduledSeq
from service.engine.sequence import Sequence


@st.composite
def batches(draw):
    block_size = draw(st.sampled_from([1, 2, 16]))
    blocks = iter(draw(st.permutations(range(1, 400))))
    batch = []
    for i in range(draw(st.integers(1, 6))):
        prompt = draw(st.integers(1, 40))
        outputs = draw(st.integers(0, 5))
        computed = draw(st.integers(0, prompt + outputs - 1))
        new = draw(st.integers(1, prompt + outputs - computed))
        seq = Sequence(str(i), list(range(100, 100 + prompt)), SamplingParams(),
                       output_token_ids=list(range(200, 200 + outputs)), num_computed_tokens=computed)
        extra = draw(st.integers(0, 2))  # a table may hold more blocks than this step's tokens need
        seq.block_table = [next(blocks) for _ in range(-(-(computed + new) // block_size) + extra)]
        batch.append(ScheduledSeq(seq, new))
    return batch, block_size


def reference(batch, block_size):
    """The per-sequence loop that ModelRunner.prepare used before."""
    ids, positions, slots, logits_indices = [], [], [], []
    for s in batch:
        start, end = s.seq.num_computed_tokens, s.seq.num_computed_tokens + s.num_new_tokens
        ids += s.seq.token_ids(start, end)
        pos = np.arange(start, end)
        table = np.asarray(s.seq.block_table, dtype=np.int64)
        positions.append(pos)
        slots.append(table[pos // block_size] * block_size + pos % block_size)
        if s.samples:
            logits_indices.append(len(ids) - 1)
    width = max(len(s.seq.block_table) for s in batch)
    tables = np.full((len(batch), width), NULL_BLOCK, dtype=np.int32)
    for i, s in enumerate(batch):
        tables[i, : len(s.seq.block_table)] = s.seq.block_table
    return ids, np.concatenate(positions), np.concatenate(slots), logits_indices, tables


@settings(max_examples=200, deadline=None)
@given(batches())
def test_batch_arrays_equal_the_per_sequence_loop(case):
    batch, block_size = case
    arrays = batch_arrays(batch, block_size)
    ids, positions, slots, logits_indices, tables = reference(batch, block_size)
    assert arrays.input_ids.tolist() == ids
    assert arrays.positions.tolist() == positions.tolist()
    assert arrays.slot_mapping.dtype == np.int64 and arrays.slot_mapping.tolist() == slots.tolist()
    assert arrays.logits_indices.tolist() == logits_indices
    assert arrays.block_tables.dtype == np.int32 and np.array_equal(arrays.block_tables, tables)
    assert arrays.starts.tolist() == [s.seq.num_computed_tokens for s in batch]
    assert arrays.q_lens.tolist() == [s.num_new_tokens for s in batch]


@settings(max_examples=100, deadline=None)
@given(batches(), st.data())
def test_tables_of_some_rows_at_any_width(case, data):
    batch, block_size = case
    arrays = batch_arrays(batch, block_size)
    rows = np.array(sorted(data.draw(st.sets(st.integers(0, len(batch) - 1), min_size=1))))
    width = data.draw(st.none() | st.integers(1, 30))
    expect_width = width or max(len(batch[r].seq.block_table) for r in rows)
    expected = np.full((len(rows), expect_width), NULL_BLOCK, dtype=np.int32)
    for i, r in enumerate(rows):
        row = batch[r].seq.block_table[:expect_width]
        expected[i, : len(row)] = row
    got = arrays.tables(rows, width)
    assert got.dtype == np.int32 and got.flags.c_contiguous and np.array_equal(got, expected)
