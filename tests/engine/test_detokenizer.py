"""Stop strings through the incremental detokenizer agree with a plain search over the whole text, whatever
the chunks the text arrives in."""

from hypothesis import given, settings
from hypothesis import strategies as st

from service.engine.detokenizer import Detokenizer
from service.tokenizer import ByteTokenizer


class CharTokenizer:
    """Token i is the character chr(i): decoding is exact and never leaves a partial character."""

    def decode_stream(self):
        return chr


def reference(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """The text up to the earliest stop string, and whether one was found."""
    found = [text.find(s) for s in stops if s in text]
    return (text[: min(found)], True) if found else (text, False)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="abc", max_size=40), stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=5),
                                                                 max_size=4), data=st.data())
def test_released_text_is_the_text_up_to_the_earliest_stop(text, stops, data):
    detok, ids, released, hit = Detokenizer(tuple(stops), CharTokenizer().decode_stream()), [], "", False
    at = 0
    while at < len(text) and not hit:
        n = data.draw(st.integers(1, 3))
        ids.extend(map(ord, text[at:at + n]))
        at += n
        new, hit = detok.update(ids)
        released += new
        # held back: at most the longest stop string's prefix that ends the text
        assert hit or len(detok.text) - len(released) < max(map(len, stops), default=1)
    if not hit:
        released += detok.flush()
    expected_text, expected_hit = reference(text[:at], tuple(stops))
    assert (released, hit) == (expected_text, expected_hit)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=30), specials=st.lists(st.integers(0, 40), max_size=5))
def test_the_byte_tokenizers_stream_decodes_as_a_whole_decode_does(text, specials):
    """Presets' byte tokenizer, one id at a time: multi-byte characters wait for their last byte, special ids
    give no text, and ids past 255 are their byte mod 256, as in decode()."""
    tok = ByteTokenizer(vocab_size=1000, bos_token_id=998, eos_token_ids=(999,))
    ids = [b + 256 * (i % 3) for i, b in enumerate(text.encode("utf-8"))]
    for at in specials:
        ids.insert(min(at, len(ids)), 999)
    step = tok.decode_stream()
    assert "".join(step(i) for i in ids) == tok.decode(ids) == text


def test_an_invalid_byte_becomes_one_replacement_character_at_once():
    step = ByteTokenizer(vocab_size=256, bos_token_id=None, eos_token_ids=()).decode_stream()
    assert [step(i) for i in b"a\xffb\xe6\x9d"] == ["a", "\ufffd", "b", "", ""]
    assert step(0xB1) == "\u6771"  # the character's last byte
