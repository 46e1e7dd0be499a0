"""kvmemo.v1 through the generated stubs, against a real `kvmemo serve`."""

import grpc
import pytest

from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from tests.server.conftest import wait_all_blocks_free


def request(text="Hello, kvmemo", max_tokens=8, **sampling) -> pb.GenerateRequest:
    return pb.GenerateRequest(text=text, max_tokens=max_tokens, sampling=pb.SamplingParameters(**sampling))


def test_generate_streams_tokens_and_the_last_message_carries_usage(stub):
    messages = list(stub.Generate(request(max_tokens=6, temperature=0)))
    assert len(messages) >= 2
    assert all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED and not m.HasField("usage") for m in messages[:-1])
    last = messages[-1]
    ids = [t for m in messages for t in m.token_ids]
    assert last.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_STOP)
    prompt_len = len(stub.Tokenize(pb.TokenizeRequest(text="Hello, kvmemo")).token_ids)
    u = last.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (prompt_len, len(ids), prompt_len + len(ids))
    assert len(ids) <= 6 and (len(ids) == 6 or last.finish_reason == pb.FINISH_REASON_STOP)
    assert 0 < u.time_to_first_token_seconds <= u.total_seconds


def test_complete_equals_the_joined_stream(stub):
    streamed = list(stub.Generate(request(max_tokens=8, temperature=0)))
    complete = stub.Complete(request(max_tokens=8, temperature=0))
    assert list(complete.token_ids) == [t for m in streamed for t in m.token_ids]
    assert complete.text == "".join(m.text for m in streamed)
    assert complete.finish_reason == streamed[-1].finish_reason
    assert complete.usage.completion_tokens == len(complete.token_ids)


def test_seeds_reproduce_and_differ(stub):
    a = stub.Complete(request(max_tokens=12, temperature=1.0, seed=7))
    b = stub.Complete(request(max_tokens=12, temperature=1.0, seed=7))
    c = stub.Complete(request(max_tokens=12, temperature=1.0, seed=8))
    assert list(a.token_ids) == list(b.token_ids)
    assert list(a.token_ids) != list(c.token_ids)


def test_stop_string_ends_generation_and_is_not_in_the_text(stub):
    free = stub.Complete(request(max_tokens=12, temperature=0, ))
    stop = free.text[3:5]
    assert stop, f"the greedy continuation {free.text!r} is too short to pick a stop string"
    stopped = stub.Complete(pb.GenerateRequest(text="Hello, kvmemo", max_tokens=12, sampling=pb.SamplingParameters(
        temperature=0), stop=pb.StopConditions(stop=[stop])))
    assert stopped.finish_reason == pb.FINISH_REASON_STOP
    assert stop not in stopped.text
    assert free.text.startswith(stopped.text)


def test_token_id_prompt_and_logprobs(stub):
    ids = list(stub.Tokenize(pb.TokenizeRequest(text="Hello")).token_ids)
    by_ids = stub.Complete(pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), max_tokens=4, logprobs=3,
                                              sampling=pb.SamplingParameters(temperature=0)))
    by_text = stub.Complete(request("Hello", max_tokens=4, temperature=0))
    assert list(by_ids.token_ids) == list(by_text.token_ids)
    assert len(by_ids.logprobs) == len(by_ids.token_ids)
    for token, lp in zip(by_ids.token_ids, by_ids.logprobs):
        assert lp.sampled.token_id == token and lp.sampled.logprob <= 0 and len(lp.top) == 3
        assert lp.top[0].token_id == token  # greedy picks the most likely token


def test_model_info_names_the_model_and_its_kv_cache(stub):
    info = wait_all_blocks_free(stub)
    assert info.name == "tiny" and info.max_model_len == 256 and info.max_num_seqs == 8
    assert info.kv_blocks_total > 0 and info.kv_blocks_free == info.kv_blocks_total
    assert info.kv_cache_memory_bytes > 0 and info.plan_source and info.block_size == 16


def code_and_details(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        result = call()
        list(result) if not isinstance(result, (pb.CompleteResponse, pb.ModelInfo, pb.TokenizeResponse)) else None
    return err.value.code(), err.value.details()


def test_prompt_longer_than_max_model_len_names_both_numbers(stub):
    code, details = code_and_details(lambda: stub.Generate(request("x" * 400)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt" in details and "401" in details and "max_model_len=256" in details


@pytest.mark.parametrize("req, field, limit", [
    (request(max_tokens=0), "max_tokens", "positive"),
    (request(temperature=-1), "temperature", "[0, 100]"),
    (request(top_p=1.5), "top_p", "(0, 1]"),
    (pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 5000])), "prompt_token_ids", "[0, 320)"),
    (pb.GenerateRequest(), "prompt", "text or token_ids"),
    (pb.GenerateRequest(text=""), "prompt", "prompt: must not be empty"),
    (pb.GenerateRequest(text="a", request_id="r" * 300), "request_id", "256"),
])
def test_bad_fields_name_the_field_and_the_limit(stub, req, field, limit):
    code, details = code_and_details(lambda: stub.Complete(req))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details and limit in details, details


def test_unknown_model_is_not_found(stub):
    for call in (lambda: stub.Complete(pb.GenerateRequest(model="gpt-5", text="a")),
                 lambda: stub.GetModelInfo(pb.GetModelInfoRequest(model="gpt-5")),
                 lambda: stub.Tokenize(pb.TokenizeRequest(model="gpt-5", text="a"))):
        code, details = code_and_details(call)
        assert code == grpc.StatusCode.NOT_FOUND and "gpt-5" in details and "tiny" in details


def test_messages_over_the_size_limit_are_refused(stub):
    code, details = code_and_details(lambda: stub.Complete(request("x" * (5 << 20))))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
