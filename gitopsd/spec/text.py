"""Which characters and sizes a value in a spec file may have, checked on every string, key and integer.

Spec values end up in places where one character changes the meaning: a newline in a Slurm partition adds an
`#SBATCH` line to the job script, one in a name adds a line to the daemon's log, an escape sequence in a label
repaints the operator's terminal, a bidirectional override makes a reviewed command read differently from what
runs. So one walk over the parsed document refuses, in every key and value at any depth (backend settings
included): control characters, line and paragraph separators and bidirectional overrides. Only three free-text
values may span lines (tabs and newlines, nothing else): a model's `metadata.description`, its
`spec.train.command` (run by `/bin/sh -c`, quoted wherever it is written into a script) and the values of
`spec.train.env` (passed through the process environment or quoted `export` lines). Strings and integers are
also bounded, so that no value is bigger than any real spec needs. Pure: no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from typing import Any

__all__ = ["MAX_INTEGER", "MAX_TEXT_CHARS", "describe_char", "forbidden_char", "suspect_text", "unsafe_values"]

#: The longest string a spec may hold anywhere (a command, a description, an environment value).
MAX_TEXT_CHARS = 65_536
#: The largest magnitude of an integer anywhere in a spec (2**53: exact in JSON, fits SQLite).
MAX_INTEGER = 2**53

_BIDI = "\u202a-\u202e\u2066-\u2069"
_ONE_LINE = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{_BIDI}]")
_MULTI_LINE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029{_BIDI}]")
#: A match when `text` holds any character forbidden somewhere (None: clean everywhere); one search per string.
suspect_text = _ONE_LINE.search
_NAMES = {
    "\n": "a newline",
    "\r": "a carriage return",
    "\t": "a tab",
    "\x00": "a NUL character",
    "\x1b": "an escape character",
    "\u2028": "a line separator",
    "\u2029": "a paragraph separator",
}

#: Where a value may span lines: (path of the value, counted from the document's top); "*" is any key.
_MULTI_LINE_AT = {
    "Model": (("metadata", "description"), ("spec", "train", "command"), ("spec", "train", "env", "*")),
}


def describe_char(char: str) -> str:
    """'a newline (U+000A)', 'a right-to-left override (U+202E)': a character named for an error message."""
    name = _NAMES.get(char)
    if name is None:
        official = unicodedata.name(char, "")
        name = f"the character {official.lower()}" if official else "a control character"
    return f"{name} (U+{ord(char):04X})"


def forbidden_char(text: str, *, multiline: bool = False) -> str | None:
    """The first character `text` may not hold, described; None when it is clean."""
    found = (_MULTI_LINE if multiline else _ONE_LINE).search(text)
    return describe_char(found.group()) if found else None


def _multiline(kind: str, loc: tuple[int | str, ...]) -> bool:
    for pattern in _MULTI_LINE_AT.get(kind, ()):
        if len(pattern) == len(loc) and all(p in ("*", part) for p, part in zip(pattern, loc, strict=True)):
            return True
    return False


def _text_problem(text: str, *, multiline: bool, key: bool) -> str | None:
    what = "key" if key else "value"
    if len(text) > MAX_TEXT_CHARS:
        return f"this {what} is {len(text)} characters long; the most any spec {what} may have is {MAX_TEXT_CHARS}"
    char = forbidden_char(text, multiline=multiline)
    if char is None:
        return None
    if multiline:
        rule = "this text may hold newlines and tabs, but no other control characters"
    else:
        rule = "it must be one line of printable text, because it reaches job scripts, Git refs and log lines"
    return f"{char} is not allowed in this {what}: {rule}"


def unsafe_values(data: Any, kind: str) -> Iterator[tuple[tuple[int | str, ...], str]]:
    """(location, message) of every key and value of a parsed document that breaks the rules above.

    `kind` ("Model" or "Repository") says which values may span lines. A key's problem is located at the
    key. The document must be bounded (see `gitopsd.spec.yamlbound`); shared nodes are visited once each
    time they are referenced, as the validator will.
    """
    suspect = suspect_text  # every forbidden character is one of these: clean text costs one search
    stack: list[tuple[tuple[int | str, ...], Any]] = [((), data)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, str):
            if len(value) > MAX_TEXT_CHARS or suspect(value):
                message = _text_problem(value, multiline=_multiline(kind, loc), key=False)
                if message:
                    yield loc, message
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and (len(key) > MAX_TEXT_CHARS or suspect(key)):
                    message = _text_problem(key, multiline=False, key=True)
                    if message:
                        yield (*loc, key), message
                        continue
                stack.append(((*loc, key if isinstance(key, str) else str(key)), item))
        elif isinstance(value, list):
            stack.extend(((*loc, index), item) for index, item in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
            yield loc, f"this {value.bit_length()}-bit integer is too large: integers in a spec stay within 2**53"
