"""Async scheduling: a pure-decode step is queued on the device before the step in flight is read back
(LLMEngine._launch_ahead). Whatever ends a request in between (its length, a stop token, a stop string in
the previous step's text, an abort), the requests get the same tokens, text and finish reasons as with
async scheduling off, and every KV block comes back."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.engine.sampling_params import SamplingParams
from tests.engine.conftest import make_engine
from tests.engine.test_block_accounting import check_invariants

ENGINE = dict(num_blocks=40, block_size=8, max_num_batched_tokens=48, max_num_seqs=4, max_model_len=72)

requests = st.lists(
    st.fixed_dictionaries({
        "prompt_len": st.integers(1, 30),
        "max_tokens": st.integers(1, 24),
        "temperature": st.sampled_from([0.0, 0.9]),
        "arrives_at_call": st.integers(0, 6),
        "stop_at": st.one_of(st.none(), st.integers(0, 12)),  # a stop string cut from the reference text
        "stop_token_at": st.one_of(st.none(), st.integers(0, 12)),
    }),
    min_size=1, max_size=6,
)


def params_of(i: int, r: dict, stop: tuple[str, ...] = (), stop_token_ids: tuple[int, ...] = ()) -> SamplingParams:
    return SamplingParams(max_tokens=r["max_tokens"], temperature=r["temperature"], seed=100 + i, ignore_eos=True,
                          stop=stop, stop_token_ids=stop_token_ids)


def serve(engine, reqs: list[dict], params: list[SamplingParams]) -> dict:
    """Adds each request at its call, steps until done; per request: tokens, text, finish reason."""
    results = {str(i): {"tokens": [], "text": "", "reason": None} for i in range(len(reqs))}
    calls = 0
    while calls <= max(r["arrives_at_call"] for r in reqs) or engine.has_unfinished():
        for i, r in enumerate(reqs):
            if r["arrives_at_call"] == calls:
                engine.add_request(str(i), [256] + [(7 * i + j) % 250 for j in range(r["prompt_len"] - 1)], params[i])
        for out in engine.step():
            got = results[out.request_id]
            got["tokens"] += out.new_token_ids
            got["text"] += out.new_text
            if out.finished:
                got["reason"] = out.finish_reason
        check_invariants(engine)
        calls += 1
        assert calls < 2_000
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_usable_blocks
    return results


def counting_launches(engine) -> dict:
    counts = {"ahead": 0, "launches": 0}
    launch = engine.runner.launch

    def counted(batch, after=None):
        counts["launches"] += 1
        counts["ahead"] += after is not None
        return launch(batch, after=after)

    engine.runner.launch = counted
    return counts


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reqs=requests)
def test_queued_ahead_steps_give_the_same_requests_as_steps_one_at_a_time(tiny_runner, reqs):
    plain = [params_of(i, r) for i, r in enumerate(reqs)]
    reference = serve(make_engine(tiny_runner, async_scheduling=False, **ENGINE), reqs, plain)
    # Stop strings and stop tokens that the reference's own output contains, so that they do end requests.
    stopped = []
    for i, r in enumerate(reqs):
        text, tokens = reference[str(i)]["text"], reference[str(i)]["tokens"]
        stop = (text[r["stop_at"]:r["stop_at"] + 2],) if r["stop_at"] is not None and len(text) > r["stop_at"] + 1 else ()
        stop_ids = (tokens[r["stop_token_at"]],) if r["stop_token_at"] is not None and len(tokens) > r["stop_token_at"] else ()
        stopped.append(params_of(i, r, stop, stop_ids))
    one_at_a_time = serve(make_engine(tiny_runner, async_scheduling=False, **ENGINE), reqs, stopped)
    ahead = serve(make_engine(tiny_runner, **ENGINE), reqs, stopped)
    assert ahead == one_at_a_time
    assert ahead["0"]["reason"] in ("length", "stop")


def test_decode_steps_are_queued_ahead_and_an_abort_in_between_frees_everything(tiny_runner):
    engine = make_engine(tiny_runner, **ENGINE)
    counts = counting_launches(engine)
    for i in range(3):
        engine.add_request(str(i), [256, 1 + i, 2], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))
    for _ in range(6):
        engine.step()
    assert engine.inflight is not None and counts["ahead"] >= 3  # the prefill step, then decodes queued ahead
    out = engine.abort("1")  # its next step is already queued on the device
    assert out.finished and out.finish_reason == "abort"
    finished = {}
    while engine.has_unfinished():
        for o in engine.step():
            assert o.request_id != "1"
            if o.finished:
                finished[o.request_id] = o
        check_invariants(engine)
    assert {rid: o.num_output_tokens for rid, o in finished.items()} == {"0": 20, "2": 20}
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_usable_blocks
