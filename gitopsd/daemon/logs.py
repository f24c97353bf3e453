"""Logging for people and for journald: one line per action, as text on a terminal or JSON lines otherwise.

Call sites pass what the line is about as `extra` (model, run_id, commit, reason, repository); the JSON
formatter turns those into fields, so `journalctl -o json` can be filtered by model or run. Secrets are never
passed to a logger; `RedactUrls`, on every handler, is the last wall behind that rule: a URL with credentials
that reaches a log line anyway (from a library's message or a traceback) is written without them.
`RepeatFilter` (logdedup) writes a repeated identical warning or error once per ten minutes. On a terminal,
`TextFormatter` escapes control characters and indents a message's later lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from gitopsd.daemon.logdedup import RepeatFilter
from gitopsd.errors import printable_lines
from gitopsd.source.redact import redact_text

FIELDS = ("repository", "model", "run_id", "commit", "reason", "trigger")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["error"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(line)


class TextFormatter(logging.Formatter):
    """`TIME LEVEL message` for a terminal. A message may quote what a pusher or a training wrote (a file name in
    a refusal), so control characters are escaped and each line after the first is indented: no escape
    sequence reaches the terminal, and no text can pass for a log line of its own."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return printable_lines(super().format(record), indent="    ")


class RedactUrls(logging.Filter):
    """Rewrites a record whose message or traceback quotes a URL with credentials (see gitopsd.source.redact)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
            clean = redact_text(message)
            if clean != message:
                record.msg, record.args = clean, None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact_text(record.exc_text)
            if record.stack_info:
                record.stack_info = redact_text(record.stack_info)
        except Exception:  # a record that cannot be formatted is the handler's to report, never the caller's
            return True
        return True


def setup(level: str = "info", fmt: str = "auto") -> None:
    """Configure the `gitopsd` logger (and the root logger's handler) once; safe to call again on reload."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactUrls())
    handler.addFilter(RepeatFilter())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "waitress", "watchfiles", "botocore", "urllib3", "s3transfer", "boto3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
