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
