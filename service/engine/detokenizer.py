"""Incremental detokenization with stop strings.

Text is released only once it is stable: the tokenizer's decode stream holds a partial UTF-8 character until
its next token, and a tail that could still become a stop string is held back until it cannot.

Each stop string is matched with a Knuth-Morris-Pratt automaton fed only the new characters, so a token costs
the same however long the text and the stop strings are (at most MAX_STOP_STRINGS of MAX_STOP_STRING_CHARS)."""

from collections.abc import Callable
from dataclasses import dataclass, field


def prefix_function(s: str) -> list[int]:
    """fail[i]: the length of the longest proper prefix of s[:i + 1] that is also its suffix."""
    fail = [0] * len(s)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fail[k - 1]
        if s[i] == s[k]:
            k += 1
        fail[i] = k
    return fail


@dataclass(slots=True)
class Detokenizer:
    stop: tuple[str, ...]
    decode_step: Callable[[int], str]  # the tokenizer's decode stream for this sequence (decode_stream())
    text: str = ""  # all stable text decoded so far
    emitted: int = 0  # characters of text already released
    read: int = 0  # output tokens given to the decode stream
    fed: int = 0  # characters of text the stop automata have seen
    matched: list[int] = field(default_factory=list)  # per stop string: its prefix that ends the text
    fail: list[list[int]] = field(default_factory=list)

    def __post_init__(self):
        self.matched = [0] * len(self.stop)
        self.fail = [prefix_function(s) for s in self.stop]

    def update(self, output_ids: list[int]) -> tuple[str, bool]:
        """output_ids: the sequence's output tokens so far (only the ones not seen before are decoded).
        Returns (newly released text, whether a stop string was hit)."""
        for token_id in output_ids[self.read :]:
            self.text += self.decode_step(token_id)
        self.read = len(output_ids)
        if not self.stop:  # nothing to hold back or look for
            self.fed = len(self.text)
            return self._release(len(self.text)), False
        stop_at = self._feed()
        if stop_at is not None:
            self.text = self.text[:stop_at]
            return self._release(len(self.text)), True
        return self._release(len(self.text) - max(self.matched, default=0)), False

    def _feed(self) -> int | None:
        """Feeds the new characters to every stop string's automaton; the start of the earliest match, if any."""
        earliest = None
        for i, s in enumerate(self.stop):
            if not s:  # validation rejects empty stop strings
                continue
            k, fail = self.matched[i], self.fail[i]
            for at in range(self.fed, len(self.text)):
                c = self.text[at]
                while k and c != s[k]:
                    k = fail[k - 1]
                if c == s[k]:
                    k += 1
                if k == len(s):
                    start = at + 1 - len(s)
                    earliest = start if earliest is None else min(earliest, start)
                    break
            self.matched[i] = k
        self.fed = len(self.text)
        return earliest

    def flush(self) -> str:
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        out = self.text[self.emitted : upto]
        self.emitted = upto
        return out
