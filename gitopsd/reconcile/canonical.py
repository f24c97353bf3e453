"""Canonical JSON (sorted keys, no spaces, ASCII, `str()` of anything else), the text that run keys and spec
digests hash.

It is exactly `json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)`, without what that call
costs beside the encoding: `json.dumps` builds a new `JSONEncoder` for every call with non-default options, and
a cold load hashes two values for each of 10,000 models. Here the C encoder is called directly, with a fresh
circular-reference check each time as `json.dumps` has. Where Python was built without the C encoder it falls
back to `json.dumps` itself. Changing this text changes every run key, so it must never change.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring_ascii
from typing import Any

#: The C encoder `json` itself uses (None where Python was built without it; typeshed does not declare it).
_c_make_encoder: Callable[..., Callable[[Any, int], Iterable[str]]] | None = getattr(
    json.encoder, "c_make_encoder", None
)

__all__ = ["canonical_json"]


def canonical_json(value: Any) -> str:
    """`json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)`, the same text, faster."""
    if _c_make_encoder is None:  # pragma: no cover
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    if isinstance(value, str):  # as `JSONEncoder.encode` does: the C encoder only takes containers
        return encode_basestring_ascii(value)
    # (markers, default, encoder, indent, key separator, item separator, sort_keys, skipkeys, allow_nan): the
    # arguments `JSONEncoder.iterencode` gives it for these options
    encode = _c_make_encoder({}, str, encode_basestring_ascii, None, ":", ",", True, False, True)
    return "".join(encode(value, 0))
