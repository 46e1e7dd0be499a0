"""Bad requests get a typed error that names the field and the limit; other requests keep running."""

import pytest

from service.engine.sampling_params import SamplingParams
from service.errors import ConfigError, InvalidRequest
from tests.engine.conftest import make_engine, run_to_completion


@pytest.mark.parametrize(
    "prompt, params, field, fragment",
    [
        ([], SamplingParams(), "prompt", "must not be empty"),
        ([1] * 200, SamplingParams(), "prompt", "max_model_len=128"),
        ([1, 2], SamplingParams(max_tokens=0), "max_tokens", "positive"),
        ([1, 2], SamplingParams(max_tokens=-3), "max_tokens", "positive"),
        ([1, 2], SamplingParams(temperature=-0.1), "temperature", "[0, 100]"),
        ([1, 2], SamplingParams(temperature=float("nan")), "temperature", "[0, 100]"),
        ([1, 2], SamplingParams(top_p=0.0), "top_p", "(0, 1]"),
        ([1, 2], SamplingParams(top_p=1.5), "top_p", "(0, 1]"),
        ([1, 2], SamplingParams(top_k=-1), "top_k", "positive"),
        ([1, 2], SamplingParams(min_p=2.0), "min_p", "[0, 1]"),
        ([1, 2], SamplingParams(logprobs=99), "logprobs", "[0, 20]"),
        ([1, 320], SamplingParams(), "prompt_token_ids", "[0, 320)"),
        ([1, -1], SamplingParams(), "prompt_token_ids", "[0, 320)"),
        ([1, 2], SamplingParams(stop_token_ids=(999,)), "stop_token_ids", "[0, 320)"),
        ([1, 2], SamplingParams(stop=("",)), "stop", "1 to 256"),
    ],
)
def test_bad_request_names_field_and_limit_while_others_run(tiny_runner, prompt, params, field, fragment):
    engine = make_engine(tiny_runner, max_model_len=128)
    engine.add_request("good", [256, 1, 2, 3], SamplingParams(max_tokens=8, ignore_eos=True))
    first = engine.step()
    with pytest.raises(InvalidRequest) as err:
        engine.add_request("bad", prompt, params)
    assert err.value.field == field and fragment in str(err.value)
    tokens, _, reasons = run_to_completion(engine)
    first_tokens = [t for o in first for t in o.new_token_ids]  # a step returns the previous step's outputs
    assert reasons == {"good": "length"} and len(first_tokens + tokens["good"]) == 8


def test_duplicate_request_id_is_rejected(tiny_runner):
    engine = make_engine(tiny_runner)
    engine.add_request("a", [1, 2], SamplingParams())
    with pytest.raises(InvalidRequest, match="already running"):
        engine.add_request("a", [1, 2], SamplingParams())


def test_kv_cache_too_small_for_one_sequence_names_the_numbers(tiny_runner):
    with pytest.raises(ConfigError, match="fewer than the 65 that one max_model_len=1024"):
        make_engine(tiny_runner, num_blocks=10)


def test_stop_strings_and_stop_tokens(tiny_runner):
    engine = make_engine(tiny_runner)
    engine.add_request("free", [256, 104, 105], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    tokens, texts, _ = run_to_completion(engine)
    free_text, free_tokens = texts["free"], tokens["free"]
    stop = free_text[5:8]
    assert stop, "the tiny model's greedy text is too short for this test"

    engine.add_request("s", [256, 104, 105], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=(stop,)))
    engine.add_request("t", [256, 104, 105], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True,
                                                            stop_token_ids=(free_tokens[3],)))
    tokens, texts, reasons = run_to_completion(engine)
    assert texts["s"] == free_text[: free_text.index(stop)] and reasons["s"] == "stop"
    assert tokens["t"] == free_tokens[: free_tokens.index(free_tokens[3]) + 1] and reasons["t"] == "stop"


def test_logprobs_are_returned_per_token(tiny_runner):
    engine = make_engine(tiny_runner)
    engine.add_request("lp", [256, 1, 2], SamplingParams(max_tokens=3, temperature=0, logprobs=2, ignore_eos=True))
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    for out in outs:
        (chosen, lp), *top = out.logprobs[0]
        assert chosen == out.new_token_ids[0] and len(top) == 2 and lp <= 0
        assert top[0][0] == chosen  # greedy: the chosen token is the most likely


def test_random_preset_weights_are_seeded():
    import torch

    from service.model.loader import load_model

    a = load_model("tiny", torch.float32, torch.device("cpu"), seed=1).model.state_dict()
    b = load_model("tiny", torch.float32, torch.device("cpu"), seed=1).model.state_dict()
    c = load_model("tiny", torch.float32, torch.device("cpu"), seed=2).model.state_dict()
    w = "model.layers.0.mlp.gate_up_proj.weight"
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a[w], c[w])
    assert abs(a[w].std().item() - 0.02) < 0.002 and abs(a[w].mean().item()) < 0.002


def test_device_oom_in_a_step_fails_that_batch_and_the_engine_keeps_serving(tiny_runner, monkeypatch):
    import torch

    engine = make_engine(tiny_runner)
    engine.add_request("victim", [256, 1, 2], SamplingParams(max_tokens=4, ignore_eos=True))
    real_run = engine.runner.launch
    monkeypatch.setattr(engine.runner, "launch", lambda batch: (_ for _ in ()).throw(torch.OutOfMemoryError("boom")))
    (out,) = engine.step()
    assert out.finished and out.finish_reason == "error" and out.error.startswith("resource exhausted")
    assert engine.num_ooms == 1 and engine.block_manager.num_free_blocks == engine.block_manager.num_usable_blocks
    monkeypatch.setattr(engine.runner, "launch", real_run)
    engine.add_request("next", [256, 3], SamplingParams(max_tokens=4, ignore_eos=True))
    tokens, _, reasons = run_to_completion(engine)
    assert reasons == {"next": "length"} and len(tokens["next"]) == 4


def test_max_tokens_past_the_context_is_capped_and_says_so(tiny_runner):
    engine = make_engine(tiny_runner, max_model_len=64)
    prompt = [256] + [104] * 9
    engine.add_request("capped", prompt, SamplingParams(max_tokens=1000, temperature=0, ignore_eos=True))
    engine.add_request("fits", prompt, SamplingParams(max_tokens=54, temperature=0, ignore_eos=True))
    last = {}
    while engine.has_unfinished():
        for out in engine.step():
            last[out.request_id] = out
    assert last["capped"].finish_reason == "length" and last["capped"].num_output_tokens == 64 - 10
    assert last["capped"].max_tokens_capped_to == 64 - 10
    assert last["fits"].num_output_tokens == 54 and last["fits"].max_tokens_capped_to is None


def test_a_request_that_breaks_the_sampler_fails_alone(tiny_runner):
    """The second line of defence: parameters that validation would have stopped, added past it, end that
    request with an error; the request beside it in the same steps gets all its tokens."""
    engine = make_engine(tiny_runner)
    engine.add_request("good", [256, 1, 2, 3], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    engine.add_request("bad", [256, 1, 2], SamplingParams(max_tokens=8))
    engine.sequences["bad"].params.top_p = "not a number"  # past validation, as a bug would
    outputs = {}
    while engine.has_unfinished():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    assert outputs["bad"][-1].finish_reason == "error" and "sampling parameters" in outputs["bad"][-1].error
    assert outputs["good"][-1].finish_reason == "length"
    assert sum(len(o.new_token_ids) for o in outputs["good"]) == 8
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_usable_blocks
