"""The scheduler's token accounting on its own, without a model: what a step's sampled tokens do to a sequence."""

import pytest

from service.engine.block_manager import BlockManager
from service.engine.sampler import SamplerOutput
from service.engine.sampling_params import SamplingParams
from service.engine.scheduler import Scheduler
from service.engine.sequence import Sequence

EOS = 2


def scheduler(max_model_len=64):
    return Scheduler(BlockManager(32, 8), max_num_seqs=4, max_num_batched_tokens=64, max_model_len=max_model_len,
                     eos_token_ids=(EOS,))


def one_step(sched, token):
    batch = sched.schedule()
    sampling = [s for s in batch if s.samples]
    return sched.update_from_output(batch, sampling, SamplerOutput([token] * len(sampling), [None] * len(sampling)))


@pytest.mark.parametrize("params, tokens, reason", [
    (SamplingParams(max_tokens=3), [5, 6, 7], "length"),
    (SamplingParams(max_tokens=8), [5, EOS], "stop"),
    (SamplingParams(max_tokens=3, ignore_eos=True), [EOS, EOS, EOS], "length"),
    (SamplingParams(max_tokens=8, stop_token_ids=[9]), [5, 9], "stop"),
])
def test_sampled_tokens_are_appended_and_stops_end_the_sequence(params, tokens, reason):
    sched = scheduler()
    seq = Sequence("a", [1] * 10, params)
    sched.add(seq)
    for i, token in enumerate(tokens):
        (sampled,) = one_step(sched, token)
        assert sampled.seq is seq and sampled.token == token
        assert sampled.finish_reason == (reason if i == len(tokens) - 1 else None)
    assert seq.output_token_ids == tokens and seq.finished and seq.finish_reason == reason
    assert not sched.has_unfinished() and sched.block_manager.num_free_blocks == sched.block_manager.num_usable_blocks


def test_computed_tokens_advance_and_max_model_len_ends_the_sequence():
    sched = scheduler(max_model_len=12)
    seq = Sequence("a", [1] * 10, SamplingParams(max_tokens=100))
    sched.add(seq)
    one_step(sched, 5)
    assert seq.num_computed_tokens == 10 and seq.first_token_time is not None and not seq.finished
    (sampled,) = one_step(sched, 6)
    assert sampled.finish_reason == "length" and seq.num_tokens == 12


def test_a_stop_string_reported_by_the_engine_wins_over_length():
    sched = scheduler()
    seq = Sequence("a", [1] * 4, SamplingParams(max_tokens=1))
    sched.add(seq)
    (sampled,) = one_step(sched, 5)
    assert sampled.finish_reason == "length"
    sched.finish(seq, "stop")
    assert seq.finish_reason == "stop" and sched.block_manager.num_free_blocks == sched.block_manager.num_usable_blocks
