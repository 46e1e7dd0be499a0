"""KServe v2 / Triton through tritonclient[grpc], a client we did not write."""

import json
import queue

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(server.address)
    yield c
    c.close()


def tensor(name: str, datatype: str, values) -> triton.InferInput:
    t = triton.InferInput(name, [len(values)], datatype)
    dtypes = {"BYTES": object, "BOOL": bool, "INT32": np.int32, "FP32": np.float32}
    t.set_data_from_numpy(np.array(values, dtype=dtypes[datatype]))
    return t


def llm_inputs(prompt: str, stream: bool = False, **sampling) -> list[triton.InferInput]:
    return [tensor("text_input", "BYTES", [prompt.encode()]), tensor("stream", "BOOL", [stream]),
            tensor("sampling_parameters", "BYTES", [json.dumps(sampling).encode()])]


def test_server_and_model_metadata(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny", as_json=True)
    inputs = {t["name"]: t["datatype"] for t in meta["inputs"]}
    assert inputs["text_input"] == "BYTES" and inputs["stream"] == "BOOL" and inputs["sampling_parameters"] == "BYTES"
    assert {t["name"]: t["datatype"] for t in meta["outputs"]}["text_output"] == "BYTES"
    config = client.get_model_config("tiny", as_json=True)["config"]
    assert config["model_transaction_policy"]["decoupled"] is True
    assert client.get_server_metadata(as_json=True)["name"] == "kvmemo"


def test_model_infer_returns_prompt_and_continuation(client):
    result = client.infer("tiny", llm_inputs("Hello", max_tokens=5, temperature=0))
    (text,) = result.as_numpy("text_output")
    assert text.startswith(b"Hello") and len(text) > len(b"Hello")
    excluded = client.infer("tiny", llm_inputs("Hello", max_tokens=5, temperature=0)
                            + [tensor("exclude_input_in_output", "BOOL", [True])])
    assert text == b"Hello" + excluded.as_numpy("text_output")[0]


def test_per_field_inputs_and_extra_outputs(client):
    inputs = [tensor("text_input", "BYTES", [b"Hello"]), tensor("max_tokens", "INT32", [3]),
              tensor("temperature", "FP32", [0.0]), tensor("return_finish_reason", "BOOL", [True]),
              tensor("return_num_input_tokens", "BOOL", [True]), tensor("return_num_output_tokens", "BOOL", [True])]
    result = client.infer("tiny", inputs)
    assert result.as_numpy("num_output_tokens")[0] <= 3
    assert result.as_numpy("num_input_tokens")[0] == 6  # bos + 5 bytes
    assert result.as_numpy("finish_reason")[0] in (b"length", b"stop")


def test_model_stream_infer_streams_tokens(client):
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer("tiny", llm_inputs("Hello", stream=True, max_tokens=6, temperature=0,
                                                     ignore_eos=True), request_id="s1")
        texts, final = [], False
        while not final:
            result, error = responses.get(timeout=60)
            assert error is None, error
            texts.append(result.as_numpy("text_output")[0])
            final = result.get_response().parameters["triton_final_response"].bool_param
    finally:
        client.stop_stream()
    assert 2 <= len(texts) <= 6  # one message per token, or fewer larger ones for a slow reader
    whole = client.infer("tiny", llm_inputs("Hello", max_tokens=6, temperature=0, ignore_eos=True)
                         + [tensor("exclude_input_in_output", "BOOL", [True])])
    assert b"".join(texts) == whole.as_numpy("text_output")[0]


def final_streamed_response(client, inputs):
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer("tiny", inputs)
        while True:
            result, error = responses.get(timeout=120)
            assert error is None, error
            if result.get_response().parameters["triton_final_response"].bool_param:
                return result.get_response()
    finally:
        client.stop_stream()


def test_max_tokens_past_the_context_comes_back_capped(client):
    prompt = "x" * 200  # bos + 200 bytes: max_model_len 256 leaves 55 tokens
    params = {"max_tokens": 100000, "temperature": 0, "ignore_eos": True}
    whole = client.infer("tiny", llm_inputs(prompt, **params) + [tensor("return_num_output_tokens", "BOOL", [True])])
    assert whole.get_response().parameters["max_tokens_capped_to"].int64_param == 55
    assert whole.as_numpy("num_output_tokens")[0] == 55
    streamed = final_streamed_response(client, llm_inputs(prompt, stream=True, **params))
    assert streamed.parameters["max_tokens_capped_to"].int64_param == 55
    fits = client.infer("tiny", llm_inputs(prompt, max_tokens=55, temperature=0, ignore_eos=True))
    assert "max_tokens_capped_to" not in fits.get_response().parameters


def test_stream_reports_a_bad_request_and_stays_open(client):
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer("tiny", llm_inputs("Hello", stream=True, max_tokens=-3))
        _, error = responses.get(timeout=60)
        assert error is not None and "max_tokens" in str(error)
        client.async_stream_infer("tiny", llm_inputs("Hello", stream=False, max_tokens=2))
        result, error = responses.get(timeout=60)
        assert error is None and result.as_numpy("text_output")[0].startswith(b"Hello")
    finally:
        client.stop_stream()


@pytest.mark.parametrize("inputs, words", [
    (llm_inputs("Hello", top_p=0), ["top_p", "(0, 1]"]),
    (llm_inputs("Hello", frequency_penalty=1.0), ["frequency_penalty", "known fields"]),
    ([tensor("text_input", "BYTES", [b"a", b"b"])], ["text_input", "exactly one"]),
    ([tensor("prompt", "BYTES", [b"a"])], ["prompt", "known inputs"]),
    (llm_inputs(""), ["text_input: must not be empty"]),  # the tensor's name, not the kvmemo.v1 field's
    (llm_inputs("x" * 300), ["max_model_len=256"]),
    (llm_inputs("Hello", stream=True), ["stream", "ModelStreamInfer"]),
])
def test_bad_inputs_are_invalid_argument(client, inputs, words):
    with pytest.raises(InferenceServerException) as err:
        client.infer("tiny", inputs)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert all(w in err.value.message() for w in words), err.value.message()


def test_unknown_model_is_not_found(client):
    with pytest.raises(InferenceServerException) as err:
        client.infer("llama", llm_inputs("Hello"))
    assert err.value.status() == "StatusCode.NOT_FOUND"
