"""Conversations to prompt text: the model's Hugging Face chat template (Jinja), rendered as transformers
renders it, or ChatML when the model has none."""

import json
from datetime import datetime
from functools import lru_cache

from service.errors import InvalidRequest, quote

ROLES = ("system", "user", "assistant")
MAX_MESSAGES = 256
# transformers' old default: ChatML, which SmolLM2 and Qwen use. Used when the tokenizer has no template.
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def check_messages(messages: list[tuple[str, str]]) -> None:
    """Raises InvalidRequest naming the message and field. An assistant turn may be empty (a reply that was
    only an end-of-sequence token); a system or user turn may not."""
    if not messages:
        raise InvalidRequest("messages", "must not be empty; send at least one user message")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest("messages", f"{len(messages)} messages; the limit is {MAX_MESSAGES}")
    for i, (role, content) in enumerate(messages):
        if role not in ROLES:
            raise InvalidRequest(f"messages[{i}].role", f"{quote(role)} is not one of {', '.join(ROLES)}")
        if not content and role != "assistant":
            raise InvalidRequest(f"messages[{i}].content", f"must not be empty in a {role} message")


def template_of(tokenizer) -> str | None:
    return getattr(tokenizer, "chat_template", None) or None


@lru_cache(maxsize=8)
def compile_template(source: str):
    """The environment transformers' apply_chat_template uses, so templates render the same here."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters, which would change the prompt.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)  # Llama 3.1's template calls it
    return env.from_string(source)


def render_chat(tokenizer, messages: list[tuple[str, str]], add_generation_prompt: bool = True) -> str:
    """The prompt text for a conversation of (role, content) pairs. Raises InvalidRequest naming `messages`
    when a message is malformed or the template refuses the conversation (raise_exception) or fails."""
    import jinja2

    check_messages(messages)
    source = template_of(tokenizer) or CHATML
    try:
        template = compile_template(source)
        return template.render(messages=[{"role": r, "content": c} for r, c in messages],
                               tools=None, documents=None, add_generation_prompt=add_generation_prompt,
                               bos_token=getattr(tokenizer, "bos_token", None) or "",
                               eos_token=getattr(tokenizer, "eos_token", None) or "")
    except jinja2.TemplateError as e:  # raise_exception, a syntax error, an undefined name
        raise InvalidRequest("messages", f"the model's chat template rejected the conversation: {quote(str(e), 200)}") from None
    except Exception as e:  # the template is the model's code: a type error in it fails this request only
        raise InvalidRequest("messages", f"the model's chat template failed: {quote(str(e), 200)}") from None


def encode_chat(tokenizer, text: str) -> list[int]:
    """Token ids for rendered chat text. Templates write the BOS text themselves; a tokenizer that also
    prepends BOS would start the prompt with two, so one is dropped."""
    ids = tokenizer.encode(text)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(ids) >= 2 and ids[0] == ids[1] == bos:
        return ids[1:]
    return ids
