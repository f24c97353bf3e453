"""Credentials out of URLs before a URL is shown anywhere: logs, errors, status, the HTTP API, tags, lineage.

An operator may give a repository as `https://user:token@host/repo.git` or with a token in its query string
(`?private_token=...`, a presigned `X-Amz-Signature=...`). libgit2 uses such a URL as it is, and it must stay
usable for fetching, so the URL itself is kept where gitopsd fetches from; every place that *shows* one goes
through `redact_url` (a URL) or `redact_text` (a message that may quote URLs). Pure functions, no I/O.

What is removed: the whole userinfo of every URL (`https://***@host/...`: a username alone may be a token, as
GitHub accepts), except a bare login name in an SSH URL (`ssh://git@host/...`, never a secret); and the value of
every query or fragment parameter whose name looks like a credential (see `is_secret_name`). The rest of the URL
stays as it was, byte for byte, so a redacted URL still says which host and repository is meant.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

REDACTED = "***"

_SSH_SCHEMES = ("ssh", "git+ssh", "ssh+git")
# Parameter names (lower case, without - and _) that carry a credential, whole or in part.
_SECRET_PARTS = ("token", "secret", "passw", "pwd", "signature", "credential", "apikey", "accesskey", "auth",
                 "session", "jwt", "cookie", "privatekey")  # fmt: skip
_SECRET_NAMES = ("sig", "key", "pass", "code", "bearer")
# A URL inside free text: a scheme, "://", then everything up to white space or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>`]+")


def is_secret_name(name: str) -> bool:
    """Whether a query parameter called `name` carries a credential (token, password, signature, ...)."""
    key = unquote(name).lower().replace("-", "").replace("_", "")
    return key in _SECRET_NAMES or any(part in key for part in _SECRET_PARTS)


def _redact_params(text: str) -> str:
    """`a=1&token=x` -> `a=1&token=***`; separators and everything else kept as they were."""
    parts = re.split(r"([&;])", text)
    for i in range(0, len(parts), 2):
        name, eq, value = parts[i].partition("=")
        if eq and value and is_secret_name(name):
            parts[i] = f"{name}={REDACTED}"
    return "".join(parts)


def redact_url(url: str) -> str:
    """`url` without the credentials it carries; a local path or scp-like `git@host:path` comes back as is."""
    scheme, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return url
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        if scheme.lower() in _SSH_SCHEMES and ":" not in userinfo:
            authority = f"{userinfo}@{host}"  # a login name, e.g. git@, is not a secret
        else:
            authority = f"{REDACTED}@{host}"
    path, hash_sign, fragment = tail.partition("#")
    path, question, query = path.partition("?")
    if question:
        query = _redact_params(query)
    if hash_sign and "=" in fragment:
        fragment = _redact_params(fragment)
    return f"{scheme}://{authority}{path}{question}{query}{hash_sign}{fragment}"


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted (an error message, a log line, a tag message)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)
