"""What the engine reports for a request after a step."""

from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool = False
    finish_reason: str | None = None  # "stop", "length", "abort" or "error"
    error: str | None = None  # set when finish_reason is "error"
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    # on the last output: max_tokens was more than max_model_len - prompt tokens, so generation stopped here
    max_tokens_capped_to: int | None = None
    logprobs: list = field(default_factory=list)  # per new token: [(id, logprob), top...]
