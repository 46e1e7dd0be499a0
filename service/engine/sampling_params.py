"""Per-request sampling parameters, validated at the engine boundary."""

from dataclasses import dataclass

from service.errors import InvalidRequest

# The one set of defaults for a field a request leaves unset: the server's (both APIs), `kvmemo generate`'s and
# `kvmemo run`'s. Temperature 0.7 rather than greedy: greedy decoding loops on small models, and on the random
# `tiny` preset it repeated one token that decodes to nothing, so `kvmemo run` printed an empty line; 0.7 keeps
# the text close to the model's likeliest without looping. 64 tokens is a sentence or two, not half of one.
DEFAULT_MAX_TOKENS = 64
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 1.0  # off
DEFAULT_TOP_K = 0  # off

MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE  # 0 means greedy
    top_k: int = DEFAULT_TOP_K  # 0 means off
    top_p: float = DEFAULT_TOP_P
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # top-N logprobs per generated token

    def __post_init__(self):
        self.stop = tuple(self.stop)
        self.stop_token_ids = tuple(self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self, vocab_size: int) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise InvalidRequest("max_tokens", f"must be a positive integer, got {self.max_tokens!r}")
        if not (self.temperature >= 0.0) or self.temperature != self.temperature or self.temperature > 100:
            raise InvalidRequest("temperature", f"must be in [0, 100], got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidRequest("top_k", f"must be 0 (off) or a positive integer, got {self.top_k!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise InvalidRequest("top_p", f"must be in (0, 1], got {self.top_p!r}")
        if not (0.0 <= self.min_p <= 1.0):
            raise InvalidRequest("min_p", f"must be in [0, 1], got {self.min_p!r}")
        if self.seed is not None and not (0 <= self.seed < 2**63):
            raise InvalidRequest("seed", f"must be in [0, 2^63), got {self.seed!r}")
        if self.logprobs is not None and not (0 <= self.logprobs <= MAX_LOGPROBS):
            raise InvalidRequest("logprobs", f"must be in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidRequest("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            if not s or len(s) > MAX_STOP_STRING_CHARS:
                raise InvalidRequest("stop", f"each stop string must have 1 to {MAX_STOP_STRING_CHARS} characters")
        for t in self.stop_token_ids:
            if not (0 <= t < vocab_size):
                raise InvalidRequest("stop_token_ids", f"token id {t} is outside the vocabulary [0, {vocab_size})")
