"""Incremental detokenization with stop strings.

Text is released only once it is stable: a trailing partial UTF-8 character waits for its next token,
and a tail that could still become a stop string is held back until it cannot."""

from dataclasses import dataclass


@dataclass(slots=True)
class Detokenizer:
    stop: tuple[str, ...]
    text: str = ""  # all stable text decoded so far
    emitted: int = 0  # characters of text already released
    prefix_offset: int = 0  # decoding restarts a few tokens back, so each step costs O(1), not O(length)
    read_offset: int = 0

    def update(self, tokenizer, output_ids: list[int]) -> tuple[str, bool]:
        """Returns (newly released text, whether a stop string was hit)."""
        prefix_text = tokenizer.decode(output_ids[self.prefix_offset : self.read_offset])
        new_text = tokenizer.decode(output_ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.text += new_text[len(prefix_text) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(output_ids)
        full = self.text
        for s in self.stop:
            at = full.find(s, max(0, self.emitted - len(s) + 1))
            if at != -1:
                self.text = full[:at]
                return self._release(len(self.text)), True
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(full)), 0, -1):
                if full.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return self._release(len(full) - hold), False

    def flush(self) -> str:
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        out = self.text[self.emitted : upto]
        self.emitted = upto
        return out
