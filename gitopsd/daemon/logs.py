"""Logging for people and for journald: one line per action, as text on a terminal or JSON lines otherwise.

Call sites pass what the line is about as `extra` (model, run_id, commit, reason, repository); the JSON
formatter turns those into fields, so `journalctl -o json` can be filtered by model or run. Secrets are never
passed to a logger.
"""

from __future__ import annotations

import json
import logging
import sys
import time

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
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup(level: str = "info", fmt: str = "auto") -> None:
    """Configure the `gitopsd` logger (and the root logger's handler) once; safe to call again on reload."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if use_json else logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "waitress", "watchfiles", "botocore", "urllib3", "s3transfer", "boto3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
