"""Property-based fuzzing of request fields: every answer is OK or an INVALID_ARGUMENT-class code, the server
never crashes, and every KV block is free at the end."""

import itertools
import json

import grpc
import numpy as np
import tritonclient.grpc as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from tests.server.conftest import wait_all_blocks_free

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.OUT_OF_RANGE}
INT64 = st.integers(-(2**63), 2**63 - 1)
SMALL = st.integers(-5, 50)
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-2, 2)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def maybe(strategy):
    return st.none() | strategy


sampling = st.builds(lambda t, k, p, m, s: pb.SamplingParameters(temperature=t, top_k=k, top_p=p, min_p=m, seed=s),
                     maybe(FLOATS), maybe(SMALL | INT64), maybe(FLOATS), maybe(FLOATS), maybe(INT64))
stops = st.builds(lambda s, ids, eos: pb.StopConditions(stop=s, stop_token_ids=ids, ignore_eos=eos),
                  st.lists(st.text(max_size=300), max_size=18), st.lists(SMALL | INT64, max_size=3), st.booleans())
prompts = st.one_of(st.builds(lambda t: {"text": t}, st.text(max_size=300)),
                    st.builds(lambda ids: {"token_ids": pb.TokenIds(ids=ids)},
                              st.lists(st.integers(-2, 330) | INT64, max_size=300)),
                    st.just({}))
requests = st.builds(
    lambda prompt, s, stop, max_tokens, logprobs, model, rid: pb.GenerateRequest(
        **prompt, sampling=s, stop=stop, max_tokens=max_tokens, logprobs=logprobs, model=model, request_id=rid),
    prompts, sampling, stops, maybe(SMALL | INT64), maybe(SMALL | INT64), st.sampled_from(["", "tiny", "nope"]),
    st.text(max_size=300))


def read_a_few_tokens(call) -> None:
    """A few tokens are enough; the rest is cancelled. Any error must be one of the allowed codes."""
    try:
        for _ in itertools.islice(call, 3):
            pass
        call.cancel()
    except grpc.RpcError as e:
        assert e.code() in ALLOWED | {grpc.StatusCode.CANCELLED}, f"{e.code()}: {e.details()}"


@SETTINGS
@given(request=requests)
def test_fuzzed_generate_requests(stub, request):
    read_a_few_tokens(stub.Generate(request, timeout=60))


roles = st.sampled_from(["system", "user", "assistant"]) | st.text(max_size=12)
chats = st.builds(
    lambda msgs, s, stop, max_tokens, model: pb.ChatRequest(
        messages=[pb.ChatMessage(role=r, content=c) for r, c in msgs], sampling=s, stop=stop, max_tokens=max_tokens,
        model=model),
    st.lists(st.tuples(roles, st.text(max_size=80)), max_size=6), sampling, stops, maybe(SMALL | INT64),
    st.sampled_from(["", "tiny", "nope"]))


@SETTINGS
@given(request=chats)
def test_fuzzed_chat_requests(stub, request):
    read_a_few_tokens(stub.Chat(request, timeout=60))


json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3), max_leaves=5)
sampling_json = st.dictionaries(st.sampled_from(["max_tokens", "temperature", "top_k", "top_p", "min_p", "seed",
                                                 "stop", "stop_token_ids", "ignore_eos", "logprobs", "bogus"]),
                                json_values, max_size=5)


@SETTINGS
@given(params=sampling_json | st.text(max_size=20), prompt=st.binary(max_size=40))
def test_fuzzed_kserve_sampling_parameters(server, params, prompt):
    client = triton.InferenceServerClient(server.address)
    raw = (json.dumps(params) if isinstance(params, dict) else params).encode()
    inputs = []
    for name, value in (("text_input", prompt), ("sampling_parameters", raw)):
        t = triton.InferInput(name, [1], "BYTES")
        t.set_data_from_numpy(np.array([value], dtype=object))
        inputs.append(t)
    try:
        client.infer("tiny", inputs, client_timeout=60)
    except InferenceServerException as e:
        assert e.status() in {f"StatusCode.{c.name}" for c in ALLOWED}, f"{e.status()}: {e.message()}"
    finally:
        client.close()


def test_every_block_is_free_after_the_fuzzing(stub, server):
    info = wait_all_blocks_free(stub)
    assert info.kv_blocks_free == info.kv_blocks_total
    assert server.proc.poll() is None, "the server died"
