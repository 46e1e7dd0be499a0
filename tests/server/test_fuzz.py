"""Property-based fuzzing of every RPC of every service: raw and mutated bytes, fields at their type's extremes,
KServe tensors of every datatype and shape. Every answer is OK or one of ALLOWED (never INTERNAL, UNKNOWN or
silence: a stream answers every request), a well-formed request running beside the fuzzing gets its own
tokens every time, the server log grows by a bounded number of lines, and every KV block is free at the end.

max_examples is chosen so that the module takes a minute or two on two slow cores."""

import itertools
import json
import re
import struct
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from google.protobuf import message_factory

from service.proto.inference import grpc_service_pb2 as kpb
from service.proto.inference import grpc_service_pb2_grpc as kpb_grpc
from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from service.server.rejections import LINES_PER_INTERVAL, INTERVAL_S
from service.server.tensors import DTYPES
from service.server.triton_llm import KNOWN_INPUTS
from tests.server.conftest import wait_all_blocks_free
from tests.server.rpcs import EVERY_METHOD, raw_call

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE}
EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b|<class |Traceback")
MAX_DETAILS_CHARS = 2000
EXTREME_INTS = st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, -(2**63)])
INT64 = st.integers(-(2**63), 2**63 - 1) | EXTREME_INTS
HUGE_TEXT = st.just("x" * 100_000) | st.just("\u00e9" * 50_000)
SMALL = st.integers(-5, 50)
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-2, 2)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def maybe(strategy):
    return st.none() | strategy


sampling = st.builds(lambda t, k, p, m, s: pb.SamplingParameters(temperature=t, top_k=k, top_p=p, min_p=m, seed=s),
                     maybe(FLOATS), maybe(SMALL | INT64), maybe(FLOATS), maybe(FLOATS), maybe(INT64))
stops = st.builds(lambda s, ids, eos: pb.StopConditions(stop=s, stop_token_ids=ids, ignore_eos=eos),
                  st.lists(st.text(max_size=300), max_size=18) | st.just(["ab"] * 100_000),
                  st.lists(SMALL | INT64, max_size=3) | st.just([1] * 100_000), st.booleans())
prompts = st.one_of(st.builds(lambda t: {"text": t}, st.text(max_size=300) | HUGE_TEXT),
                    st.builds(lambda ids: {"token_ids": pb.TokenIds(ids=ids)},
                              st.lists(st.integers(-2, 330) | INT64, max_size=300) | st.just([1] * 100_000)),
                    st.just({}))
MODELS = st.sampled_from(["", "tiny", "nope", "m" * 100_000, "\x00"]) | st.text(max_size=20)
requests = st.builds(
    lambda prompt, s, stop, max_tokens, logprobs, model, rid: pb.GenerateRequest(
        **prompt, sampling=s, stop=stop, max_tokens=max_tokens, logprobs=logprobs, model=model, request_id=rid),
    prompts, sampling, stops, maybe(SMALL | INT64), maybe(SMALL | INT64), MODELS, st.text(max_size=300))


def assert_allowed(code: grpc.StatusCode, details: str) -> None:
    assert code in ALLOWED, f"{code}: {details[:500]}"
    assert len(details) <= MAX_DETAILS_CHARS and not EXCEPTION_NAME.search(details), details[:500]


def read_a_few_tokens(call) -> None:
    """A few tokens are enough; the rest is cancelled. Any error must be one of the allowed codes."""
    try:
        for _ in itertools.islice(call, 3):
            pass
        call.cancel()
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            assert_allowed(e.code(), e.details() or "")


@SETTINGS
@given(request=requests)
def test_fuzzed_generate_requests(stub, request):
    read_a_few_tokens(stub.Generate(request, timeout=60))


roles = st.sampled_from(["system", "user", "assistant"]) | st.text(max_size=12)
chats = st.builds(
    lambda msgs, s, stop, max_tokens, model: pb.ChatRequest(
        messages=[pb.ChatMessage(role=r, content=c) for r, c in msgs], sampling=s, stop=stop, max_tokens=max_tokens,
        model=model),
    st.lists(st.tuples(roles, st.text(max_size=80)), max_size=6) | st.just([("user", "hi")] * 300), sampling, stops,
    maybe(SMALL | INT64), MODELS)


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


# --- well-formed traffic beside the fuzzing, and what the log may grow by ----------------------------------
NEIGHBOUR = pb.GenerateRequest(text="The neighbour", max_tokens=16, sampling=pb.SamplingParameters(temperature=0),
                               stop=pb.StopConditions(ignore_eos=True))


class Neighbour:
    """Sends the same greedy request over and over while the fuzzing runs; each reply must be its own tokens."""

    def __init__(self, stub):
        self.stub = stub
        self.expected = list(stub.Complete(NEIGHBOUR, timeout=120).token_ids)
        self.runs, self.failures = 0, []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping.is_set():
            try:
                tokens = list(self.stub.Complete(NEIGHBOUR, timeout=300).token_ids)
                if tokens != self.expected:
                    self.failures.append(f"tokens {tokens}, expected {self.expected}")
            except grpc.RpcError as e:
                self.failures.append(f"{e.code()}: {e.details()}")
            self.runs += 1

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=300)


@pytest.fixture(scope="module", autouse=True)
def neighbour(stub, server):
    start_lines, start = server.log().count("\n"), time.monotonic()
    n = Neighbour(stub)
    n.log_start = (start_lines, start)
    yield n
    n.stop()


def test_nothing(neighbour):
    """The neighbour starts before the first fuzzed request (pytest sets up the autouse fixture here)."""


@pytest.fixture(scope="module")
def kserve(channel):
    return kpb_grpc.GRPCInferenceServiceStub(channel)


# --- raw bytes, random and mutated, to every method of every service -------------------------------------
def seed_message(method) -> bytes:
    """A well-formed request for the method, to mutate."""
    seeds = {"kvmemo.v1.GenerateRequest": pb.GenerateRequest(text="Hi", max_tokens=2),
             "kvmemo.v1.ChatRequest": pb.ChatRequest(messages=[pb.ChatMessage(role="user", content="Hi")], max_tokens=2),
             "kvmemo.v1.TokenizeRequest": pb.TokenizeRequest(text="Hi"),
             "inference.ModelInferRequest": kpb.ModelInferRequest(model_name="tiny", id="x", inputs=[
                 kpb.ModelInferRequest.InferInputTensor(name="text_input", datatype="BYTES", shape=[1],
                                                        contents=kpb.InferTensorContents(bytes_contents=[b"Hi"]))])}
    if method.input_type in seeds:
        return seeds[method.input_type].SerializeToString()
    message = message_factory.GetMessageClass(method.input_descriptor)()
    for f in method.input_descriptor.fields:  # every string field set, so that mutations can break its UTF-8
        if f.type == f.TYPE_STRING and not f.is_repeated and not f.containing_oneof:
            setattr(message, f.name, "tiny")
    return message.SerializeToString()


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "bad_utf8", "overlong_varint"]))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 4))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "bad_utf8":
            data[at:at] = b"\x0a\x02\xff\xfe"  # field 1, length-delimited: bad UTF-8 where field 1 is a string
        else:
            data[at:at] = b"\x08" + b"\xff" * 10 + b"\x01"  # an 11-byte varint
    return bytes(data)


def payloads_for(method):
    return st.lists(st.binary(max_size=64) | mutated(seed_message(method)), min_size=1, max_size=3)


def check_raw_reply(method, payloads, code, details, replies):
    assert_allowed(code, details)
    if method.path.endswith("/ModelStreamInfer"):  # every request on the stream gets one final response
        finals = [r for r in map(kpb.ModelStreamInferResponse.FromString, replies)
                  if r.infer_response.parameters["triton_final_response"].bool_param]
        assert len(finals) == len(payloads), (payloads, replies)
        for r in finals:
            assert len(r.error_message) <= MAX_DETAILS_CHARS and not EXCEPTION_NAME.search(r.error_message)


@pytest.mark.parametrize("method", EVERY_METHOD, ids=lambda m: m.path)
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_raw_and_mutated_bytes_on_every_method(channel, method, data):
    payloads = data.draw(payloads_for(method))
    check_raw_reply(method, payloads, *raw_call(channel, method, payloads))


# --- the small RPCs' fields at their extremes -------------------------------------------------------------
@SETTINGS
@given(model=MODELS, text=st.text(max_size=50) | HUGE_TEXT, version=st.text(max_size=5) | st.just("9" * 100_000))
def test_fuzzed_small_rpcs(stub, kserve, model, text, version):
    calls = [lambda: stub.Tokenize(pb.TokenizeRequest(model=model, text=text), timeout=60),
             lambda: stub.GetModelInfo(pb.GetModelInfoRequest(model=model), timeout=60),
             lambda: kserve.ModelReady(kpb.ModelReadyRequest(name=model, version=version), timeout=60),
             lambda: kserve.ModelMetadata(kpb.ModelMetadataRequest(name=model, version=version), timeout=60),
             lambda: kserve.ModelConfig(kpb.ModelConfigRequest(name=model, version=version), timeout=60)]
    for call in calls:
        try:
            call()
        except grpc.RpcError as e:
            assert_allowed(e.code(), e.details() or "")


# --- KServe tensors of every datatype and shape -----------------------------------------------------------
TYPED_VALUES = {
    "bool_contents": st.booleans(), "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1), "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1) | st.just(2**64 - 1), "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(), "bytes_contents": st.binary(max_size=20) | st.just(b"\xff\xfe"),
}
SHAPES = st.lists(st.integers(0, 3) | st.sampled_from([-1, 1024, 1025, 2**31 - 1, 2**63 - 1, -(2**63)]), max_size=4) \
    | st.just([1] * 100_000)
TENSOR_NAMES = st.sampled_from(sorted(KNOWN_INPUTS)) | st.text(max_size=10) | st.just("n" * 100_000)
DATATYPES = st.sampled_from([*DTYPES, "FP16", "BF16", ""]) | st.text(max_size=6)
SAMPLING_JSON = st.sampled_from([b'{"max_tokens": 2}', b'{"top_k": 1e400}', b'{"max_tokens": 2, "stop_token_ids": [1]}',
                                 b"[" * 3000, b'{"temperature": NaN}', b'\xff']) | st.binary(max_size=30)


def raw_values(datatype: str, values: list) -> bytes:
    fmt = DTYPES.get(datatype, (None,))[0]
    if fmt is None:
        return b"".join(struct.pack("<I", len(v)) + v for v in values if isinstance(v, bytes))
    try:
        return struct.pack(f"<{len(values)}{fmt}", *values)
    except struct.error:
        return b""


@st.composite
def infer_tensor(draw):
    name, datatype, shape = draw(TENSOR_NAMES), draw(DATATYPES), draw(SHAPES)
    field = DTYPES.get(datatype, (None, draw(st.sampled_from(sorted(TYPED_VALUES)))))[1]
    count = 1
    for d in shape[:8]:
        count *= d
    size = count if 0 <= count <= 8 and draw(st.booleans()) else draw(st.integers(0, 4))
    values = draw(st.lists(TYPED_VALUES[field], min_size=size, max_size=size))
    tensor = kpb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return tensor, raw_values(datatype, values)


def text_input(prompt: bytes):
    tensor = kpb.ModelInferRequest.InferInputTensor(name="text_input", datatype="BYTES", shape=[1],
                                                    contents=kpb.InferTensorContents(bytes_contents=[prompt]))
    return tensor, struct.pack("<I", len(prompt)) + prompt


@st.composite
def infer_requests(draw):
    tensors = draw(st.lists(infer_tensor(), max_size=4))
    if draw(st.booleans()):
        tensors.insert(0, text_input(draw(st.sampled_from([b"Hi", b"", b"\xff"]))))
    if draw(st.booleans()):
        tensors.append(text_input(draw(SAMPLING_JSON)))
        tensors[-1][0].name = "sampling_parameters"
    request = kpb.ModelInferRequest(model_name=draw(st.sampled_from(["tiny", "", "nope"])),
                                    model_version=draw(st.sampled_from(["", "1", "2"])), id=draw(st.text(max_size=8)))
    raw = draw(st.booleans())
    for tensor, data in tensors:
        if raw:
            tensor.ClearField("contents")
            request.raw_input_contents.append(data)
        request.inputs.append(tensor)
    return request


@SETTINGS
@given(request=infer_requests())
def test_fuzzed_kserve_tensors_through_model_infer(kserve, request):
    try:
        kserve.ModelInfer(request, timeout=120)
    except grpc.RpcError as e:
        assert_allowed(e.code(), e.details() or "")


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(requests=st.lists(infer_requests(), min_size=1, max_size=3))
def test_fuzzed_kserve_tensors_on_one_stream_each_get_a_final_response(channel, requests):
    stream_method = next(m for m in EVERY_METHOD if m.path.endswith("/ModelStreamInfer"))
    payloads = [r.SerializeToString() for r in requests]
    check_raw_reply(stream_method, payloads, *raw_call(channel, stream_method, payloads, timeout=300))


# --- at the end: the neighbour, the log and the KV cache ---------------------------------------------------
def test_the_neighbour_always_got_its_own_tokens(neighbour):
    deadline = time.monotonic() + 300  # bounds a failing test only; the condition is the neighbour's next run
    runs = neighbour.runs
    while neighbour.runs == runs and time.monotonic() < deadline:
        time.sleep(0.05)
    neighbour.stop()
    assert neighbour.runs > runs and not neighbour.failures, neighbour.failures[:5]


def test_the_log_grew_by_a_bounded_number_of_lines(server, neighbour):
    """Rejections are rate-limited (LINES_PER_INTERVAL per INTERVAL_S, then one summary line); nothing else
    the fuzzing does may log per request, and nothing logs a traceback."""
    start_lines, start = neighbour.log_start
    log = server.log()
    new = log.split("\n")[start_lines:]
    windows = (time.monotonic() - start) / INTERVAL_S + 2
    assert len(new) <= windows * (LINES_PER_INTERVAL + 1) + 10, "\n".join(new[-40:])
    assert not any("Traceback" in line for line in new), "\n".join(new[-40:])


def test_every_block_is_free_after_the_fuzzing(stub, server):
    info = wait_all_blocks_free(stub)
    assert info.kv_blocks_free == info.kv_blocks_total
    assert server.proc.poll() is None, "the server died"
