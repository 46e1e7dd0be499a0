"""The Chat RPC and the max_tokens cap against a real `kvmemo serve` (the tiny preset has no chat template,
so conversations render as ChatML; its replies are noise, so the tests check the protocol, not the text)."""

import grpc
import pytest

from service.chat import MAX_MESSAGES, render_chat
from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from tests.server.conftest import wait_all_blocks_free
from tests.server.test_kvmemo_api import code_and_details

QUESTION = [("system", "Be brief."), ("user", "What is the capital of France?")]


def chat(messages, max_tokens=6, **sampling) -> pb.ChatRequest:
    return pb.ChatRequest(messages=[pb.ChatMessage(role=r, content=c) for r, c in messages], max_tokens=max_tokens,
                          sampling=pb.SamplingParameters(**sampling))


def chatml_tokens(stub, messages) -> int:
    text = render_chat(None, messages)  # no template: ChatML, as the tiny model gets
    return len(stub.Tokenize(pb.TokenizeRequest(text=text)).token_ids)


def test_chat_streams_tokens_and_ends_with_finish_reason_and_usage(stub):
    request = chat(QUESTION, max_tokens=6, temperature=0)
    request.request_id = "chat-1"
    messages = list(stub.Chat(request))
    assert len(messages) >= 2 and all(m.request_id == "chat-1" for m in messages)
    assert all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED and not m.HasField("usage") for m in messages[:-1])
    last = messages[-1]
    ids = [t for m in messages for t in m.token_ids]
    assert last.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_STOP)
    assert last.usage.prompt_tokens == chatml_tokens(stub, QUESTION)
    assert last.usage.completion_tokens == len(ids) and last.usage.max_tokens_capped_to == 0


def test_chat_is_generate_on_the_rendered_conversation(stub):
    by_chat = list(stub.Chat(chat(QUESTION, max_tokens=8, temperature=0)))
    by_text = stub.Complete(pb.GenerateRequest(text=render_chat(None, QUESTION), max_tokens=8,
                                               sampling=pb.SamplingParameters(temperature=0)))
    assert [t for m in by_chat for t in m.token_ids] == list(by_text.token_ids)
    assert not stub.GetModelInfo(pb.GetModelInfoRequest()).has_chat_template
    assert render_chat(None, QUESTION).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


@pytest.mark.parametrize("messages, field, words", [
    ([], "messages", "must not be empty"),
    ([("user", "a"), ("assistant", "b"), ("user", "c"), ("robot", "d")], "messages[3].role",
     "'robot' is not one of system, user, assistant"),
    ([("user", "hi")] * (MAX_MESSAGES + 1), "messages", f"{MAX_MESSAGES + 1} messages; the limit is {MAX_MESSAGES}"),
    ([("user", "")], "messages[0].content", "must not be empty"),
    ([("user", "x" * 400)], "prompt", "max_model_len=256"),
], ids=["empty", "bad-role", "too-many", "empty-content", "too-long"])
def test_bad_conversations_are_invalid_argument_and_the_server_keeps_serving(stub, messages, field, words):
    code, details = code_and_details(lambda: stub.Chat(chat(messages)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(field + ":") and words in details, details
    assert list(stub.Chat(chat(QUESTION, max_tokens=2)))[-1].usage.completion_tokens >= 1
    info = wait_all_blocks_free(stub, timeout=30)
    assert info.kv_blocks_free == info.kv_blocks_total


def test_chat_for_another_model_is_not_found(stub):
    request = chat(QUESTION)
    request.model = "gpt-5"
    code, details = code_and_details(lambda: stub.Chat(request))
    assert code == grpc.StatusCode.NOT_FOUND and "gpt-5" in details


def test_max_tokens_past_the_context_is_capped_and_usage_says_so(stub):
    prompt = "x" * 200  # bos + 200 bytes: max_model_len 256 leaves 55
    last = list(stub.Generate(pb.GenerateRequest(text=prompt, max_tokens=100000, stop=pb.StopConditions(
        ignore_eos=True), sampling=pb.SamplingParameters(temperature=0))))[-1]
    assert last.finish_reason == pb.FINISH_REASON_LENGTH
    assert last.usage.completion_tokens == 55 and last.usage.max_tokens_capped_to == 55
    fits = stub.Complete(pb.GenerateRequest(text=prompt, max_tokens=55, sampling=pb.SamplingParameters(temperature=0)))
    assert fits.usage.max_tokens_capped_to == 0
    by_chat = list(stub.Chat(chat([("user", "y" * 150)], max_tokens=100000, temperature=0)))[-1]
    assert by_chat.usage.max_tokens_capped_to == 256 - by_chat.usage.prompt_tokens
