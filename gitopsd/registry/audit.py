"""Audit in Git: an annotated tag `models/NAME/vN` on the commit every version was trained from.

The tag's message carries the lineage summary (run key, artifact digest, metrics, job), so `git tag -n` and
`git show models/blobs/v3` answer "what is this version and where did it come from" without gitopsd. Tags are
created in the mirror and, when configured, pushed to the tracked repository's remote. A push that fails is
logged and retried on the next registration; the tag itself is never lost (it is in the mirror).
"""

from __future__ import annotations

import logging

from gitopsd.errors import GitopsdError
from gitopsd.registry.versions import Version
from gitopsd.source.mirror import Source
from gitopsd.source.redact import redact_text

log = logging.getLogger("gitopsd")
PREFIX = "models/"


def tag_name(version: Version) -> str:
    return f"{PREFIX}{version.model}/v{version.number}"


def tag_message(version: Version) -> str:
    """The tag's message: the lineage summary, with any URL in it shown without credentials."""
    lineage = version.lineage
    metrics = " ".join(f"{k}={v:.6g}" for k, v in sorted(version.metrics.items()))
    job = lineage.get("job", {})
    text = "\n".join(
        [
            f"{version.label}",
            "",
            f"run key: {version.run_key}",
            f"artifact: sha256:{version.artifact.sha256} ({version.artifact.size} bytes)",
            f"metrics: {metrics}",
            f"backend: {lineage.get('backend', {}).get('name')} job {lineage.get('job_id')} on {job.get('host')}",
            f"run: {version.run_id} (attempt {lineage.get('attempt')})",
            f"spec: {lineage.get('spec_path')} code tree {lineage.get('code_tree')}",
            "",
        ]
    )
    return redact_text(text)


def tag_version(source: Source, version: Version) -> None:
    """Tag the version's commit in the mirror (idempotent); `push_tags` takes it to the remote."""
    try:
        created = source.tag(tag_name(version), str(version.lineage["commit"]), tag_message(version))
        if created:
            log.info("%s: tagged %s", version.model, tag_name(version))
    except (GitopsdError, KeyError, ValueError) as exc:
        log.warning("%s: audit tag for %s not created: %s", version.model, version.label, exc)


def push_tags(source: Source) -> None:
    """Push every model tag the remote may lack; raises when the remote cannot take them (the outbox retries)."""
    source.push_tags(source.tags(PREFIX))
