"""After any interleaving of add, abort, step and finish, every KV block is free again."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.engine.sampling_params import SamplingParams
from tests.engine.conftest import make_engine

actions = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 60), st.integers(1, 12)),
        st.tuples(st.just("abort"), st.integers(0, 20)),
        st.tuples(st.just("step"), st.integers(1, 4)),
    ),
    max_size=40,
)


def check_invariants(engine):
    bm = engine.block_manager
    owned = [b for seq in engine.sequences.values() for b in seq.block_table]
    assert len(owned) == len(set(owned)), "a block is owned twice"
    assert set(owned).isdisjoint(bm.free_blocks), "a block is both owned and free"
    assert len(owned) + bm.num_free_blocks == bm.num_usable_blocks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=actions)
def test_every_block_comes_back(tiny_runner, actions):
    # Few blocks and a small budget, so that chunking and preemption happen often.
    engine = make_engine(tiny_runner, num_blocks=12, block_size=8, max_num_batched_tokens=24, max_num_seqs=4,
                         max_model_len=80)
    added = 0
    for action in actions:
        if action[0] == "add":
            engine.add_request(str(added), [256] + [7] * (action[1] - 1),
                               SamplingParams(max_tokens=action[2], temperature=0.8, seed=added, ignore_eos=True))
            added += 1
        elif action[0] == "abort":
            engine.abort(str(action[1]))
        else:
            for _ in range(action[1]):
                engine.step()
        check_invariants(engine)
    half = list(engine.sequences)[::2]
    for rid in half:
        engine.abort(rid)
    while engine.has_unfinished():
        engine.step()
        check_invariants(engine)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_usable_blocks
    assert not engine.sequences
