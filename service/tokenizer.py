"""Tokenizers: a Hugging Face tokenizer.json through `tokenizers`, or a byte-level one for presets."""

from pathlib import Path

from service.errors import ModelLoadError


class ByteTokenizer:
    """Token i < 256 is byte i. Random-weight presets with larger vocabularies generate ids above 255;
    those decode as byte i % 256 so that every id has text."""

    def __init__(self, vocab_size: int, bos_token_id: int | None, eos_token_ids: tuple[int, ...]):
        self.vocab_size = vocab_size
        self.bos_token_id = bos_token_id
        self.eos_token_ids = eos_token_ids

    def encode(self, text: str) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ([self.bos_token_id] if self.bos_token_id is not None else []) + ids

    def decode(self, ids: list[int]) -> str:
        special = {self.bos_token_id, *self.eos_token_ids}
        return bytes(i % 256 for i in ids if i not in special).decode("utf-8", errors="replace")


class HFTokenizer:
    def __init__(self, path: Path, eos_token_ids: tuple[int, ...]):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise ModelLoadError(f"{path}: cannot load tokenizer: {e}") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_token_ids = eos_token_ids
        self.bos_token_id = None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


def load_tokenizer(model_dir: Path | None, vocab_size: int, bos: int | None, eos: tuple[int, ...]):
    if model_dir is not None and (model_dir / "tokenizer.json").is_file():
        return HFTokenizer(model_dir / "tokenizer.json", eos)
    return ByteTokenizer(vocab_size, bos, eos)
