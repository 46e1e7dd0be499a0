"""Per-request sampling parameters, validated at the engine boundary."""

from dataclasses import dataclass, field

from service.errors import InvalidRequest, quote

# The one set of defaults for a field a request leaves unset: the server's (both APIs), `kvmemo generate`'s and
# `kvmemo run`'s. Temperature 0.7 rather than greedy: greedy decoding loops on small models, and on the random
# `tiny` preset it repeated one token that decodes to nothing, so `kvmemo run` printed an empty line; 0.7 keeps
# the text close to the model's likeliest without looping. 64 tokens is a sentence or two, not half of one.
DEFAULT_MAX_TOKENS = 64
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 1.0  # off
DEFAULT_TOP_K = 0  # off

# Every limit a request is held to here is listed in docs/limits.md (tests/server/test_limits_doc.py checks it).
MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_STOP_TOKEN_IDS = 256
MAX_INT64 = 2**63 - 1  # max_tokens and top_k: what kvmemo.v1's int64 fields hold, also through KServe's JSON
MAX_TEMPERATURE = 100.0
# Temperatures below this are greedy: dividing logits by 5e-324 gives inf and NaN, not a sharper distribution.
# vLLM's _SAMPLING_EPS.
TEMPERATURE_EPSILON = 1e-5


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
    # stop_token_ids as a set: the per-token check costs the same whatever the list's length
    stop_token_set: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.stop = tuple(self.stop)
        self.stop_token_ids = tuple(self.stop_token_ids)
        self.stop_token_set = frozenset(self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature < TEMPERATURE_EPSILON

    def validate(self, vocab_size: int) -> None:
        """Bounds every value that reaches a tensor or a loop; the message names the field, the value (cut
        short) and the limit."""
        if not is_int(self.max_tokens) or not 1 <= self.max_tokens <= MAX_INT64:
            raise InvalidRequest("max_tokens", f"must be a positive integer up to 2^63 - 1, got {quote(self.max_tokens)}")
        if not is_number(self.temperature) or not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise InvalidRequest("temperature", f"must be in [0, {MAX_TEMPERATURE:g}], got {quote(self.temperature)}")
        if not is_int(self.top_k) or not 0 <= self.top_k <= MAX_INT64:
            raise InvalidRequest("top_k", f"must be 0 (off) or a positive integer up to 2^63 - 1, got {quote(self.top_k)}")
        if not is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest("top_p", f"must be in (0, 1], got {quote(self.top_p)}")
        if not is_number(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            raise InvalidRequest("min_p", f"must be in [0, 1], got {quote(self.min_p)}")
        if self.seed is not None and (not is_int(self.seed) or not 0 <= self.seed <= MAX_INT64):
            raise InvalidRequest("seed", f"must be in [0, 2^63), got {quote(self.seed)}")
        if self.logprobs is not None and (not is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise InvalidRequest("logprobs", f"must be in [0, {MAX_LOGPROBS}], got {quote(self.logprobs)}")
        if not isinstance(self.ignore_eos, bool):
            raise InvalidRequest("ignore_eos", f"must be true or false, got {quote(self.ignore_eos)}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidRequest("stop", f"{len(self.stop)} stop strings; the limit is {MAX_STOP_STRINGS}")
        for i, s in enumerate(self.stop):
            if not isinstance(s, str) or not 1 <= len(s) <= MAX_STOP_STRING_CHARS:
                raise InvalidRequest("stop", f"each stop string must have 1 to {MAX_STOP_STRING_CHARS} characters; "
                                             f"string {i} is {quote(s)}")
        if len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise InvalidRequest("stop_token_ids",
                                 f"{len(self.stop_token_ids)} ids; the limit is {MAX_STOP_TOKEN_IDS}")
        for t in self.stop_token_ids:
            if not is_int(t) or not 0 <= t < vocab_size:
                raise InvalidRequest("stop_token_ids", f"token id {quote(t)} is outside the vocabulary [0, {vocab_size})")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A real number (NaN fails every range check that follows)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
