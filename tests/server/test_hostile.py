"""Issue 14's hostile requests against a real `kvmemo serve`: each bad request gets its own clear error, and
the requests beside it are unaffected."""

import json
import queue
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from service.engine.sampling_params import MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS
from service.proto.inference import grpc_service_pb2 as kpb
from service.proto.inference import grpc_service_pb2_grpc as kpb_grpc
from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from service.server.tensors import MAX_DIMS, MAX_ELEMENTS
from tests.server.conftest import wait_all_blocks_free
from tests.server.rpcs import EVERY_METHOD, raw_call

SHORT = 400  # what "a short message" means here: far below grpc's 16 KiB metadata limit
EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b|<class ")


def bytes_tensor(name: str, value: bytes) -> kpb.ModelInferRequest.InferInputTensor:
    return kpb.ModelInferRequest.InferInputTensor(name=name, datatype="BYTES", shape=[1],
                                                  contents=kpb.InferTensorContents(bytes_contents=[value]))


def infer_request(prompt: bytes = b"Hello", sampling: dict | bytes | None = None, *extra, rid: str = "") -> kpb.ModelInferRequest:
    inputs = [bytes_tensor("text_input", prompt)]
    if sampling is not None:
        inputs.append(bytes_tensor("sampling_parameters",
                                   sampling if isinstance(sampling, bytes) else json.dumps(sampling).encode()))
    return kpb.ModelInferRequest(model_name="tiny", id=rid, inputs=inputs + list(extra))


OVERFLOWING_TOP_K = [
    infer_request(b"Hello", {"top_k": 10**30, "max_tokens": 4}),
    infer_request(b"Hello", {"max_tokens": 4}, kpb.ModelInferRequest.InferInputTensor(
        name="top_k", datatype="UINT64", shape=[1], contents=kpb.InferTensorContents(uint64_contents=[2**64 - 1]))),
]
# What ModelStreamInfer once swallowed and ModelInfer answered UNKNOWN to (items 2 and 3).
SWALLOWED = [
    infer_request(b"Hello", b"[" * 100000 + b"]" * 100000),
    infer_request(b"Hello", b"[" * 20000 + b"]" * 20000),  # under the size limit, past json's recursion limit
    kpb.ModelInferRequest(model_name="tiny", inputs=[bytes_tensor("text_input", b"Hello"),
                          kpb.ModelInferRequest.InferInputTensor(name="sampling_parameters", datatype="INT32",
                                                                 shape=[1], contents=kpb.InferTensorContents(int_contents=[7]))]),
]


@pytest.fixture(scope="module")
def kserve(channel):
    return kpb_grpc.GRPCInferenceServiceStub(channel)


def solo_tokens(stub, text="Once upon a time", n=40) -> list[int]:
    reply = stub.Complete(pb.GenerateRequest(text=text, max_tokens=n, sampling=pb.SamplingParameters(temperature=0),
                                             stop=pb.StopConditions(ignore_eos=True)), timeout=120)
    return list(reply.token_ids)


def assert_invalid(error: grpc.RpcError, *words, code=grpc.StatusCode.INVALID_ARGUMENT):
    assert error.code() == code, f"{error.code()}: {error.details()}"
    details = error.details()
    assert len(details) < SHORT and not EXCEPTION_NAME.search(details), details
    assert all(w in details for w in words), details


class Streamed:
    """A ModelStreamInfer call whose requests are sent one at a time; each reply can be awaited."""

    def __init__(self, kserve):
        self.requests: queue.Queue = queue.Queue()
        self.replies: queue.Queue = queue.Queue()
        self.call = kserve.ModelStreamInfer(iter(self.requests.get, None), timeout=300)
        self.reader = threading.Thread(target=lambda: [self.replies.put(r) for r in self.call], daemon=True)
        self.reader.start()

    def send(self, request):
        self.requests.put(request)

    def until_final(self, rid: str) -> list[kpb.ModelStreamInferResponse]:
        """The replies to request `rid` up to its final one (others' replies are kept for their own call)."""
        mine = []
        while True:
            reply = self.replies.get(timeout=120)
            if reply.infer_response.id != rid:
                self.replies.put(reply)
                continue
            mine.append(reply)
            if reply.infer_response.parameters["triton_final_response"].bool_param:
                return mine

    def close(self):
        self.requests.put(None)
        self.reader.join(timeout=60)


def test_an_overflowing_top_k_fails_alone_beside_a_generate_and_on_a_stream(stub, kserve):
    """Item 1: once INTERNAL for it and every request in its engine step."""
    expected = solo_tokens(stub)
    with ThreadPoolExecutor(1) as pool:
        neighbour = pool.submit(solo_tokens, stub)
        for request in OVERFLOWING_TOP_K:
            with pytest.raises(grpc.RpcError) as err:
                kserve.ModelInfer(request, timeout=60)
            assert_invalid(err.value, "top_k", "2^63 - 1")
        stream = Streamed(kserve)
        try:
            good = infer_request(b"Hello", {"max_tokens": 5, "temperature": 0, "ignore_eos": True}, rid="good")
            stream.send(good)
            for i, bad in enumerate(OVERFLOWING_TOP_K):
                bad.id = f"bad{i}"
                stream.send(bad)
            for i in range(len(OVERFLOWING_TOP_K)):
                (reply,) = stream.until_final(f"bad{i}")
                assert "top_k" in reply.error_message and "2^63 - 1" in reply.error_message
            replies = stream.until_final("good")
            assert not any(r.error_message for r in replies)
        finally:
            stream.close()
        assert neighbour.result(timeout=120) == expected


def test_every_bad_request_on_a_stream_gets_a_final_error(kserve):
    """Items 2 and 7: an error_message whose response is final, as tritonclient expects, and the stream
    stays open for the next request."""
    stream = Streamed(kserve)
    try:
        for i, bad in enumerate(SWALLOWED):
            bad.id = f"bad{i}"
            stream.send(bad)
            (reply,) = stream.until_final(f"bad{i}")
            assert "sampling_parameters" in reply.error_message and len(reply.error_message) < SHORT
        stream.send(infer_request(b"Hello", {"max_tokens": 2}, rid="after"))
        assert not stream.until_final("after")[-1].error_message
    finally:
        stream.close()


def test_model_infer_answers_the_same_inputs_invalid_argument_without_a_traceback(kserve, server):
    """Item 3: once UNKNOWN ("Unexpected <class 'RecursionError'>") with an ERROR traceback each."""
    for request in SWALLOWED:
        with pytest.raises(grpc.RpcError) as err:
            kserve.ModelInfer(request, timeout=60)
        assert_invalid(err.value, "sampling_parameters")
    assert "Traceback" not in server.log()


def test_tritonclient_gets_the_error_of_a_failed_streamed_request(server):
    """Item 7: the callback gets the error; the README's loop checks it before reading the result."""
    client = triton.InferenceServerClient(server.address)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        bad = triton.InferInput("sampling_parameters", [1], "BYTES")
        bad.set_data_from_numpy(np.array([json.dumps({"top_k": 10**30}).encode()], dtype=object))
        text = triton.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"Hello"], dtype=object))
        client.async_stream_infer("tiny", [text, bad])
        result, error = responses.get(timeout=60)
        assert result is None and "top_k" in str(error)
    finally:
        client.stop_stream()
    from tests.test_readme import ROOT
    readme = ROOT.joinpath("README.md").read_text()
    loop = readme.split("responses.get()", 1)[1].split("client.stop_stream()", 1)[0]
    assert "if error" in loop.split("as_numpy", 1)[0], "the README's streaming loop must handle error"


@pytest.mark.parametrize("method", EVERY_METHOD, ids=lambda m: m.path)
def test_malformed_protobuf_is_invalid_argument_on_every_method(channel, server, method):
    """Item 4: a truncated length varint (any message) and bad UTF-8 in a string field, once UNKNOWN and a
    traceback per packet."""
    code, details, replies = raw_call(channel, method, [b"\x0a\xff\xff\xff", b"\x12\x02\xff\xfe"])
    if method.path.endswith("/ModelStreamInfer"):  # reported in the stream, which stays open
        assert code == grpc.StatusCode.OK and len(replies) == 2
        for raw in replies:
            reply = kpb.ModelStreamInferResponse.FromString(raw)
            assert "not a valid inference.ModelInferRequest message" in reply.error_message
            assert reply.infer_response.parameters["triton_final_response"].bool_param
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code}: {details}"
        assert "not a valid" in details and len(details) < SHORT
    assert "Traceback" not in server.log()


def test_bad_utf8_in_a_string_field_is_invalid_argument(channel):
    complete = next(m for m in EVERY_METHOD if m.path == "/kvmemo.v1.KvmemoService/Complete")
    code, details, _ = raw_call(channel, complete, [b"\x12\x02\xff\xfe"])  # text = b"\xff\xfe"
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "kvmemo.v1.GenerateRequest" in details


def test_errors_quote_only_a_short_prefix_of_huge_input(stub, kserve):
    """Item 5: once RESOURCE_EXHAUSTED 'received metadata size exceeds hard limit' instead of the real code."""
    huge = "m" * (1 << 20)
    with pytest.raises(grpc.RpcError) as err:
        stub.Complete(pb.GenerateRequest(model=huge, text="hi"), timeout=60)
    assert_invalid(err.value, "mmmm", "1048576 characters", code=grpc.StatusCode.NOT_FOUND)
    with pytest.raises(grpc.RpcError) as err:
        kserve.ModelInfer(kpb.ModelInferRequest(model_name=huge), timeout=60)
    assert_invalid(err.value, code=grpc.StatusCode.NOT_FOUND)
    request = infer_request()
    request.inputs[0].ClearField("shape")
    request.inputs[0].shape.extend([1] * 100000)
    with pytest.raises(grpc.RpcError) as err:
        kserve.ModelInfer(request, timeout=60)
    assert_invalid(err.value, "text_input", "100000 dimensions", str(MAX_DIMS))


def complete_error(stub, request) -> grpc.RpcError | None:
    try:
        stub.Complete(request, timeout=120)
    except grpc.RpcError as e:
        return e
    return None


def with_stops(ids=(), strings=(), max_tokens=2) -> pb.GenerateRequest:
    return pb.GenerateRequest(text="Hello", max_tokens=max_tokens, sampling=pb.SamplingParameters(temperature=0),
                              stop=pb.StopConditions(stop_token_ids=ids, stop=strings, ignore_eos=True))


def test_lists_at_their_limit_pass_and_past_it_are_rejected_naming_it(stub, kserve):
    """Item 6: every list a request carries has a limit."""
    assert complete_error(stub, with_stops(ids=[300] * MAX_STOP_TOKEN_IDS)) is None
    assert_invalid(complete_error(stub, with_stops(ids=[300] * (MAX_STOP_TOKEN_IDS + 1))), "stop_token_ids",
                   str(MAX_STOP_TOKEN_IDS))
    assert_invalid(complete_error(stub, with_stops(ids=[300] * 1_000_000)), "stop_token_ids", str(MAX_STOP_TOKEN_IDS))
    assert complete_error(stub, with_stops(strings=["zz"] * MAX_STOP_STRINGS)) is None
    assert_invalid(complete_error(stub, with_stops(strings=["zz"] * (MAX_STOP_STRINGS + 1))), "stop",
                   str(MAX_STOP_STRINGS))
    with pytest.raises(grpc.RpcError) as err:
        kserve.ModelInfer(infer_request(b"Hello", {"stop_token_ids": [1] * 300000}), timeout=60)
    assert_invalid(err.value, "sampling_parameters", "65536")
    with pytest.raises(grpc.RpcError) as err:
        kserve.ModelInfer(infer_request(b"Hello", {"stop_token_ids": [1] * (MAX_STOP_TOKEN_IDS + 1)}), timeout=60)
    assert_invalid(err.value, "stop_token_ids", str(MAX_STOP_TOKEN_IDS))
    stop = kpb.ModelInferRequest.InferInputTensor(name="stop", datatype="BYTES", shape=[MAX_ELEMENTS + 1],
                                                  contents=kpb.InferTensorContents(bytes_contents=[b"x"] * (MAX_ELEMENTS + 1)))
    with pytest.raises(grpc.RpcError) as err:
        kserve.ModelInfer(infer_request(b"Hello", None, stop), timeout=60)
    assert_invalid(err.value, "stop", str(MAX_ELEMENTS))


def test_a_small_request_completes_beside_max_size_ones(stub):
    """Item 6: the per-token cost of stop ids does not grow with their number; 8 requests at every list
    limit in flight, an unrelated request still gets its own tokens (bench/hostile_neighbours.py times it)."""
    expected = solo_tokens(stub, "The small one", 20)
    heavy = with_stops(ids=[300] * MAX_STOP_TOKEN_IDS, strings=["\x00" * 256] * MAX_STOP_STRINGS, max_tokens=60)
    with ThreadPoolExecutor(9) as pool:
        big = [pool.submit(stub.Complete, heavy, timeout=300) for _ in range(8)]
        small = pool.submit(solo_tokens, stub, "The small one", 20)
        assert small.result(timeout=300) == expected
        assert all(f.result(timeout=300).finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH) for f in big)


def test_a_temperature_below_the_epsilon_is_greedy(stub):
    """Item 9: 5e-324 once sampled from inf/NaN logits and produced NUL characters."""
    request = pb.GenerateRequest(text="Once upon a time", max_tokens=12, sampling=pb.SamplingParameters(temperature=5e-324),
                                 stop=pb.StopConditions(ignore_eos=True))
    assert list(stub.Complete(request, timeout=120).token_ids) == solo_tokens(stub, n=12)


def test_no_status_names_a_python_exception_class(stub, kserve):
    """Item 9: users see the field, the value and the limit (once "Unexpected <class 'RecursionError'>")."""
    for request in (pb.GenerateRequest(text="hi", max_tokens=2, sampling=pb.SamplingParameters(top_k=-(2**63))),
                    pb.GenerateRequest(token_ids=pb.TokenIds(ids=[2**63 - 1]))):
        assert_invalid(complete_error(stub, request))
    for request in SWALLOWED:
        with pytest.raises(grpc.RpcError) as err:
            kserve.ModelInfer(request, timeout=60)
        assert not EXCEPTION_NAME.search(err.value.details()), err.value.details()


def test_all_blocks_are_free_after_the_hostile_requests(stub):
    info = wait_all_blocks_free(stub)
    assert info.kv_blocks_free == info.kv_blocks_total
