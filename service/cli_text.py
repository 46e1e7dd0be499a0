"""Text in and out of the terminal commands: prompts read from an argument, stdin or a file, and generated
text made safe to print (a model can emit any byte, terminal control sequences included)."""

import sys
import unicodedata
from pathlib import Path

# Printed as they are; every other control character is shown escaped.
KEPT_CONTROLS = {"\n", "\t"}


def read_prompt(arg: str, stdin=None) -> str:
    """`-` reads standard input, `@path` reads a file (UTF-8), anything else is the prompt itself.
    Raises ValueError naming the source when it cannot be read."""
    if arg == "-":
        return (stdin or sys.stdin).read()
    if arg.startswith("@"):
        path = Path(arg[1:])
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"prompt file {str(path)!r}: {e}") from None
    return arg


def escape_controls(text: str) -> str:
    """Control and other non-printable characters (ESC, \\b, \\f, ...) as Python escapes; newlines and tabs
    stay, and so does every printable character of any script."""
    out = []
    for ch in text:
        if ch in KEPT_CONTROLS or unicodedata.category(ch)[0] != "C":
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def for_terminal(text: str, stream=None) -> str:
    """The text as it should be written to `stream`: escaped when it is a terminal, untouched otherwise
    (a pipe or a file gets the model's exact output)."""
    stream = stream or sys.stdout
    isatty = getattr(stream, "isatty", None)
    return escape_controls(text) if isatty and isatty() else text
