"""Stop strings through the incremental detokenizer agree with a plain search over the whole text, whatever
the chunks the text arrives in."""

from hypothesis import given, settings
from hypothesis import strategies as st

from service.engine.detokenizer import Detokenizer


class CharTokenizer:
    """Token i is the character chr(i): decoding is exact and never leaves a partial character."""

    def decode(self, ids):
        return "".join(map(chr, ids))


def reference(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """The text up to the earliest stop string, and whether one was found."""
    found = [text.find(s) for s in stops if s in text]
    return (text[: min(found)], True) if found else (text, False)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="abc", max_size=40), stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=5),
                                                                 max_size=4), data=st.data())
def test_released_text_is_the_text_up_to_the_earliest_stop(text, stops, data):
    detok, tokenizer, ids, released, hit = Detokenizer(tuple(stops)), CharTokenizer(), [], "", False
    at = 0
    while at < len(text) and not hit:
        n = data.draw(st.integers(1, 3))
        ids.extend(map(ord, text[at:at + n]))
        at += n
        new, hit = detok.update(tokenizer, ids)
        released += new
        # held back: at most the longest stop string's prefix that ends the text
        assert hit or len(detok.text) - len(released) < max(map(len, stops), default=1)
    if not hit:
        released += detok.flush()
    expected_text, expected_hit = reference(text[:at], tuple(stops))
    assert (released, hit) == (expected_text, expected_hit)
