"""Writing a command's lines to the terminal or a pipe, the way the command line always has.

One rule for every line a command prints: it ends with a newline, is flushed at once (a log or a pipe sees it
as it happens), and loses its terminal escape sequences (colours, cursor moves) when the stream is not a
terminal, so a file or a pipe gets plain text.
"""

from __future__ import annotations

import re
import sys
from typing import TextIO

_ESCAPE = re.compile(r"\x1b\[[;?0-9]*[a-zA-Z]")  # a CSI sequence: ESC [ parameters final-letter


def plain(text: str) -> str:
    """`text` without terminal escape sequences."""
    return _ESCAPE.sub("", text) if "\x1b" in text else text


def echo(message: str = "", *, err: bool = False, nl: bool = True) -> None:
    """Print `message` (and a newline unless `nl` is False) to stdout, or stderr with `err`, and flush."""
    stream: TextIO = sys.stderr if err else sys.stdout
    text = message + "\n" if nl else message
    if not text:
        stream.flush()
        return
    if not stream.isatty():
        text = plain(text)
    stream.write(text)
    stream.flush()
