"""Chat templates render as transformers renders them; bad conversations name the message and field."""

from types import SimpleNamespace

import pytest

from service.chat import CHATML, MAX_MESSAGES, encode_chat, render_chat
from service.errors import InvalidRequest
from service.tokenizer import ByteTokenizer

# SmolLM2-135M-Instruct's tokenizer_config.json chat_template, verbatim.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>'"
    " + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Meta-Llama-3-8B-Instruct's chat_template, verbatim.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Written over several lines: trim_blocks and lstrip_blocks decide its whitespace; checks roles itself.
MULTILINE = """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + message['role']) }}
    {% endif %}
    {{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{% endfor %}
{% if add_generation_prompt %}
    {{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{% endif %}"""
# Mistral style: refuses a conversation whose turns do not alternate, through raise_exception.
ALTERNATING = """{{ bos_token }}{% for message in messages %}
{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
{% endif %}
{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}
{% else %}{{ message['content'] + eos_token }}{% endif %}
{% endfor %}"""
# Uses tojson and a namespace, as tool-calling templates do.
JSONY = """{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m | tojson }}
{% endfor %}{{ ns.n }}{% if add_generation_prompt %}<reply>{% endif %}"""

CONVERSATION = [("system", "Be brief."), ("user", "What is the capital of France?"),
                ("assistant", "Paris. <é>"), ("user", "  And of Italy?  ")]


def tokenizer(template, bos="<s>", eos="</s>"):
    return SimpleNamespace(chat_template=template, bos_token=bos, eos_token=eos)


def transformers_render(template, messages, add_generation_prompt, bos="<s>", eos="</s>"):
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[[{"role": r, "content": c} for r, c in messages]],
                                        chat_template=template, add_generation_prompt=add_generation_prompt,
                                        bos_token=bos, eos_token=eos)
    return rendered[0]


@pytest.mark.parametrize("template", [SMOLLM2, LLAMA3, MULTILINE, JSONY, CHATML],
                         ids=["smollm2", "llama3", "multiline", "tojson", "chatml"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("messages", [CONVERSATION, CONVERSATION[1:2]], ids=["four", "one"])
def test_renders_as_transformers_does(template, add_generation_prompt, messages):
    ours = render_chat(tokenizer(template), messages, add_generation_prompt)
    assert ours == transformers_render(template, messages, add_generation_prompt)


def test_alternating_template_matches_and_its_refusal_names_messages():
    ok = [("user", "hi"), ("assistant", "hello"), ("user", "bye")]
    assert render_chat(tokenizer(ALTERNATING), ok) == transformers_render(ALTERNATING, ok, True)
    with pytest.raises(InvalidRequest) as err:
        render_chat(tokenizer(ALTERNATING), [("user", "a"), ("user", "b")])
    assert err.value.field == "messages" and "must alternate" in str(err.value)


def test_no_template_means_chatml():
    assert render_chat(SimpleNamespace(), [("user", "hi")]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat(ByteTokenizer(320, 256, (257,)), [("user", "hi")], add_generation_prompt=False) == (
        "<|im_start|>user\nhi<|im_end|>\n")


@pytest.mark.parametrize("template", ["{% for m in messages %}", "{{ messages[0].content + 1 }}"],
                         ids=["syntax", "type-error"])
def test_a_broken_template_fails_the_request_naming_messages(template):
    with pytest.raises(InvalidRequest) as err:
        render_chat(tokenizer(template), [("user", "hi")])
    assert err.value.field == "messages" and "chat template" in str(err.value)


@pytest.mark.parametrize("messages, field, words", [
    ([], "messages", "must not be empty"),
    ([("user", "x")] * (MAX_MESSAGES + 1), "messages", f"the limit is {MAX_MESSAGES}"),
    ([("user", "a"), ("assistant", "b"), ("user", "c"), ("robot", "d")], "messages[3].role",
     "'robot' is not one of system, user, assistant"),
    ([("user", "")], "messages[0].content", "must not be empty"),
    ([("system", ""), ("user", "a")], "messages[0].content", "must not be empty"),
])
def test_bad_conversations_name_the_field(messages, field, words):
    with pytest.raises(InvalidRequest) as err:
        render_chat(tokenizer(SMOLLM2), messages)
    assert err.value.field == field and words in str(err.value)


def test_an_empty_assistant_turn_is_allowed():
    render_chat(tokenizer(SMOLLM2), [("user", "a"), ("assistant", ""), ("user", "b")])


def test_bos_is_not_doubled():
    class PrependsBos:  # like a tokenizer.json post-processor that adds BOS and parses "<s>" as BOS too
        bos_token_id = 1

        def encode(self, text):
            return [1] + [1 if text.startswith("<s>") else 9] + [9] * 3

    assert encode_chat(PrependsBos(), "<s>hi") == [1, 9, 9, 9]
    assert encode_chat(PrependsBos(), "hi") == [1, 9, 9, 9, 9]
    byte = ByteTokenizer(320, 256, (257,))
    assert encode_chat(byte, "hi") == [256, 104, 105]
