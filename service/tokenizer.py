"""Tokenizers: a Hugging Face tokenizer.json or a GGUF file's vocabulary through `tokenizers`, or a byte-level
one for presets. Each has `chat_template`, `bos_token` and `eos_token` (text, or None) for chat rendering, and
`decode_stream()`: a new sequence's text one token at a time, each call O(1) however long the text."""

import codecs
import json
from collections.abc import Callable
from pathlib import Path

from service.errors import ModelLoadError


class ByteTokenizer:
    """Token i < 256 is byte i. Random-weight presets with larger vocabularies generate ids above 255;
    those decode as byte i % 256 so that every id has text."""

    chat_template = None
    bos_token = None  # bos and eos are ids without text here
    eos_token = None

    def __init__(self, vocab_size: int, bos_token_id: int | None, eos_token_ids: tuple[int, ...]):
        self.vocab_size = vocab_size
        self.bos_token_id = bos_token_id
        self.eos_token_ids = eos_token_ids
        self._special = frozenset({bos_token_id, *eos_token_ids})

    def encode(self, text: str) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ([self.bos_token_id] if self.bos_token_id is not None else []) + ids

    def decode(self, ids: list[int]) -> str:
        special = self._special
        return bytes(i % 256 for i in ids if i not in special).decode("utf-8", errors="replace")

    def decode_stream(self) -> Callable[[int], str]:
        """step(token id) -> the text it completes ("" while a UTF-8 character is still partial)."""
        decoder, special = codecs.getincrementaldecoder("utf-8")(errors="replace"), self._special
        return lambda token_id: "" if token_id in special else decoder.decode(bytes((token_id % 256,)))


class HFTokenizer:
    """A `tokenizers.Tokenizer`. `add_bos` prepends the BOS id (GGUF files say so in their metadata; a
    tokenizer.json does it in its own post-processor)."""

    def __init__(self, tok, eos_token_ids: tuple[int, ...], bos_token_id: int | None = None, add_bos: bool = False,
                 chat_template: str | None = None, bos_token: str | None = None, eos_token: str | None = None):
        self._tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.eos_token_ids = eos_token_ids
        self.bos_token_id = bos_token_id
        self._prefix = [bos_token_id] if add_bos and bos_token_id is not None else []
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token

    def encode(self, text: str) -> list[int]:
        return self._prefix + self._tok.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def decode_stream(self) -> Callable[[int], str]:
        """step(token id) -> the text it completes: `tokenizers`' DecodeStream, which decodes a few tokens back
        so that a word's leading space and byte-fallback characters come out as in a whole decode."""
        from tokenizers.decoders import DecodeStream

        stream, tok = DecodeStream(skip_special_tokens=True), self._tok
        return lambda token_id: stream.step(tok, token_id) or ""


def _token_text(value) -> str | None:
    """tokenizer_config.json writes a special token as its text or as an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def _chat_template(model_dir: Path, config: dict) -> str | None:
    """transformers 4.43+ saves the template as chat_template.jinja; older ones inside tokenizer_config.json,
    as a string or a list of named templates."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    return template


def hf_dir_tokenizer(model_dir: Path, bos: int | None, eos: tuple[int, ...]) -> HFTokenizer:
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise ModelLoadError(f"{path}: cannot load tokenizer: {e}") from None
    config = {}
    if (model_dir / "tokenizer_config.json").is_file():
        try:
            config = json.loads((model_dir / "tokenizer_config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{model_dir / 'tokenizer_config.json'}: cannot read: {e}") from None
    bos_text = _token_text(config.get("bos_token")) or (tok.id_to_token(bos) if bos is not None else None)
    eos_text = _token_text(config.get("eos_token")) or (tok.id_to_token(eos[0]) if eos else None)
    return HFTokenizer(tok, eos, chat_template=_chat_template(model_dir, config), bos_token=bos_text,
                       eos_token=eos_text)


# How a byte-level vocabulary's merges were learned, by GGUF `tokenizer.ggml.pre` (the subset of transformers'
# GGUF_PRE_TOKENIZER_SPLITS for Llama 3 and Qwen2/3); any other splits as GPT-2 does.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF_SPLITS = {"llama3": LLAMA3_SPLIT, "llama-v3": LLAMA3_SPLIT, "llama-bpe": LLAMA3_SPLIT, "smaug-bpe": LLAMA3_SPLIT,
               "qwen2": QWEN2_SPLIT, "deepseek-r1-qwen": QWEN2_SPLIT}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types


def byte_spelling() -> dict[int, str]:
    """GPT-2's printable character for each byte (transformers' bytes_to_unicode)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    extra = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def gguf_tokenizer(fields: dict, eos: tuple[int, ...], source: str) -> HFTokenizer:
    """Byte-level BPE from a GGUF file's `tokenizer.ggml.*` metadata, built as transformers builds it, so that
    both give the same ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    if fields["model"] != "gpt2":
        raise ModelLoadError(f"{source}: unsupported GGUF tokenizer {fields['model']!r} (tokenizer.ggml.model); "
                             f"supported: gpt2 (byte-level BPE)")
    if not fields["merges"]:
        raise ModelLoadError(f"{source}: the GGUF tokenizer has no merges (tokenizer.ggml.merges)")
    tokens = fields["tokens"]
    spelling = byte_spelling()
    alphabet = set(spelling.values())
    # A token outside the byte alphabet (a mislabelled special token) is respelled byte by byte, as transformers does.
    spelled = [t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode()) for t in tokens]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(spelled)}, [tuple(m.split(" ")) for m in fields["merges"]]))
    split = GGUF_SPLITS.get(fields["pre"])
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    types = fields["token_type"] or []
    # Kept whole in the text. A respelled one is skipped: adding it would grow the vocabulary past the model's.
    added = [(t, k) for t, s, k in zip(tokens, spelled, types) if k in (CONTROL, USER_DEFINED) and t == s]
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, k in added if k == CONTROL])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t, k in added if k == USER_DEFINED])
    bos = fields["bos_token_id"]

    def text(i):
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    return HFTokenizer(tok, eos, bos_token_id=bos, add_bos=bool(fields["add_bos_token"]),
                       chat_template=fields["chat_template"], bos_token=text(bos), eos_token=text(fields["eos_token_id"]))


def load_tokenizer(model_dir: Path | None, vocab_size: int, bos: int | None, eos: tuple[int, ...]):
    if model_dir is not None and (model_dir / "tokenizer.json").is_file():
        return hf_dir_tokenizer(model_dir, bos, eos)
    return ByteTokenizer(vocab_size, bos, eos)
