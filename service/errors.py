"""Errors a caller can act on: each names the field, the value and the limit."""


class InvalidRequest(ValueError):
    """A request field is out of range; the request is rejected and nothing else is affected."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ResourceExhausted(RuntimeError):
    """The request cannot be served now (queue full, device out of memory); others keep running."""


class ModelLoadError(RuntimeError):
    """A model directory or preset cannot be loaded; the message names the file and tensor."""


class ConfigError(ValueError):
    """A setting is out of range; the message names the setting, the value and the limit."""


QUOTE_CHARS = 40


def quote(value, chars: int = QUOTE_CHARS) -> str:
    """A client's value as an error message shows it: at most the first QUOTE_CHARS characters of its repr, so
    that an error about a huge value stays short (grpc drops a status whose details pass its metadata limit)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, (str, bytes)) and len(value) > chars:
        return f"{value[:chars]!r}… ({len(value)} {'characters' if isinstance(value, str) else 'bytes'})"
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return f"[{', '.join(quote(v) for v in value[:4])}, …] ({len(value)} elements)"
    text = repr(value)
    return text if len(text) <= chars else text[:chars] + "…"
