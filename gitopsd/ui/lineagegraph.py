"""A version's lineage as a graph for the version page: commit -> spec -> run -> job -> artifact -> version. Pure.

`gitopsd lineage NAME@N` prints where a version came from as lines; the dashboard draws the same facts as
nodes and edges, and for a fine-tuned version goes on through its base version, the base's base and so on
(`chain`: at most `MAX_DEPTH` versions, a base seen before ends the chain, so a cycle cannot loop). Edges point
the way things were made: a commit declares a spec, the spec starts a run, the run ran as a job, the job wrote
the artifact, the artifact was registered as the version, and a base version was what the run fine-tuned.

Everything in a lineage came through a run directory or a repository at some point (subjects, host names, a
backend's job facts), so every string is redacted (`gitopsd.source.redact`), cut to `MAX_TEXT` characters, and a
node's `detail` holds strings only. The commit node links to the forge only when the operator configured an
http(s) URL template with `{commit}` and the commit is a full hex object id.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from gitopsd.source.redact import redact_text, redact_url

MAX_DEPTH = 20
"""Most versions in a chain of bases (the version itself included)."""
MAX_TEXT = 500
"""Longest string in a node's label or detail."""
MAX_ITEMS = 32
"""Most items of a list shown in a detail (GPUs, nodes, data)."""
MAX_NESTING = 16
"""Deepest nesting of the raw lineage kept (deeper values are cut to a string)."""

_HEX_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_LABEL = re.compile(r"(?P<model>.+)@(?P<number>[1-9][0-9]{0,17})")

Getter = Callable[[str, int], Mapping[str, Any] | None]
"""(model, number) -> the version as `views` hands it over (model, number, created_at, artifact, metrics,
gates, lineage), or None when the registry has no such version."""


def base_of(version: Mapping[str, Any]) -> tuple[str, int] | None:
    """The (model, number) a version was fine-tuned from, from its lineage's `base.label`; None when none."""
    lineage = version.get("lineage")
    base = lineage.get("base") if isinstance(lineage, Mapping) else None
    label = base.get("label") if isinstance(base, Mapping) else None
    match = _LABEL.fullmatch(label) if isinstance(label, str) else None
    return (match["model"], int(match["number"])) if match else None


def chain(get: Getter, model: str, number: int, depth: int = MAX_DEPTH) -> list[Mapping[str, Any]]:
    """The version and its bases, nearest first: at most `depth`, ending at a version without a base, at a base
    the registry does not have, or at one already in the chain (a cycle)."""
    out: list[Mapping[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    key: tuple[str, int] | None = (model, number)
    while key is not None and key not in seen and len(out) < depth:
        seen.add(key)
        version = get(*key)
        if version is None:
            break
        out.append(version)
        key = base_of(version)
    return out


def commit_link(template: str | None, commit: object) -> str | None:
    """The forge URL of `commit` from the operator's template (`https://forge/org/repo/commit/{commit}`)."""
    if not template or "{commit}" not in template or not isinstance(commit, str) or not _HEX_ID.fullmatch(commit):
        return None
    url = template.replace("{commit}", commit)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in url):
        return None
    return redact_url(url)


def version_url(repository: str, model: str, number: int) -> str:
    """The version page of `model@number`, each path segment quoted."""
    return f"/ui/versions/{quote(repository, safe='')}/{quote(model, safe='')}/{int(number)}"


def text(value: object, limit: int = MAX_TEXT) -> str:
    """A value as one redacted string of at most `limit` characters (lists joined, mappings as JSON)."""
    if value is None:
        shown = ""
    elif isinstance(value, str):
        shown = value
    elif isinstance(value, bool):
        shown = "true" if value else "false"
    elif isinstance(value, int | float):
        shown = repr(value) if isinstance(value, float) and not math.isfinite(value) else str(value)
    elif isinstance(value, list | tuple):
        shown = ", ".join(text(item, limit) for item in value[:MAX_ITEMS])
        shown += f", ... ({len(value) - MAX_ITEMS} more)" if len(value) > MAX_ITEMS else ""
    else:
        shown = json.dumps(redacted(value, 4), sort_keys=True, default=str)
    shown = redact_text(shown)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def redacted(value: object, depth: int = MAX_NESTING) -> Any:
    """`value` (JSON data) with every string redacted, non-finite numbers as None, and nesting cut at `depth`."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth <= 0:
        return text(value)
    if isinstance(value, Mapping):
        return {redact_text(str(k)): redacted(v, depth - 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(item, depth - 1) for item in value]
    return redact_text(str(value))


def _details(pairs: Sequence[tuple[str, object]]) -> dict[str, str]:
    return {key: text(value) for key, value in pairs if value not in (None, "", [], {})}


def _gpus(job: Mapping[str, Any]) -> object:
    gpus = job.get("gpus")
    if isinstance(gpus, list):
        return [_gpu(g) for g in gpus[:MAX_ITEMS]]
    return gpus


def _gpu(device: object) -> object:
    if isinstance(device, Mapping):
        return " ".join(text(device.get(k), 100) for k in ("name", "uuid") if device.get(k)) or device
    return device


class _Graph:
    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.edges: dict[tuple[str, str], dict[str, str]] = {}

    def node(self, id_: str, kind: str, label: object, detail: dict[str, str], url: str | None = None) -> str:
        known = self.nodes.get(id_)
        if known is None:
            self.nodes[id_] = {"id": id_, "kind": kind, "label": text(label, 200), "detail": detail, "url": url}
        else:  # a base version met first as a base, then as the head of its own chain: keep what both say
            known["detail"] = {**known["detail"], **detail}
            known["url"] = known["url"] or url
        return id_

    def edge(self, source: str, target: str, label: str) -> None:
        self.edges.setdefault((source, target), {"from": source, "to": target, "label": label})

    def doc(self) -> dict[str, Any]:
        return {"nodes": list(self.nodes.values()), "edges": list(self.edges.values())}


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def graph(versions: Sequence[Mapping[str, Any]], *, repository: str, commit_url: str | None = None) -> dict[str, Any]:
    """The lineage graph of `versions[0]` through its bases (`chain`), as {"nodes", "edges"}."""
    g = _Graph()
    for index, version in enumerate(versions):
        model, number = str(version.get("model")), int(version.get("number") or 0)
        lineage = _mapping(version.get("lineage"))
        artifact = _mapping(version.get("artifact"))
        job = _mapping(lineage.get("job"))
        info = _mapping(lineage.get("commit_info"))
        commit = lineage.get("commit")
        label = f"{model}@{number}"
        metrics = sorted(_mapping(version.get("metrics")).items())[:MAX_ITEMS]
        head = g.node(
            f"version:{label}", "version", label,
            _details([("version", label), ("created_at", version.get("created_at")),
                      ("metrics", ", ".join(f"{k}={text(v, 40)}" for k, v in metrics))]),
            url=None if index == 0 else version_url(repository, model, number),
        )  # fmt: skip
        commit_id = g.node(
            f"commit:{text(commit, 64)}", "commit", f"{text(commit, 12)} {text(info.get('subject'), 80)}".strip(),
            _details([("commit", commit), ("subject", info.get("subject")), ("author", info.get("author")),
                      ("time", info.get("time")), ("repository", lineage.get("repo"))]),
            url=commit_link(commit_url, commit),
        )  # fmt: skip
        spec = g.node(
            f"spec:{text(commit, 64)}:{text(lineage.get('spec_path'), 200)}", "spec", lineage.get("spec_path"),
            _details([("path", lineage.get("spec_path")), ("run_key", lineage.get("run_key")),
                      ("spec_digest", lineage.get("spec_digest")), ("code_tree", lineage.get("code_tree")),
                      ("workdir", lineage.get("workdir")), ("command", lineage.get("command")),
                      ("data", [f"{_mapping(d).get('uri')} sha256:{_mapping(d).get('sha256')}"
                                for d in lineage.get("data") or [] if isinstance(d, Mapping)])]),
        )  # fmt: skip
        backend = _mapping(lineage.get("backend"))
        run = g.node(
            f"run:{text(lineage.get('run_id'), 200)}", "run", lineage.get("run_id"),
            _details([("run_id", lineage.get("run_id")), ("attempt", lineage.get("attempt")),
                      ("backend", backend.get("name")), ("backend_type", backend.get("type")),
                      ("started_at", lineage.get("started_at")), ("ended_at", lineage.get("ended_at")),
                      ("exit_code", lineage.get("exit_code")), ("python", lineage.get("python")),
                      ("environment", lineage.get("environment"))]),
        )  # fmt: skip
        job_id = lineage.get("job_id") or job.get("job_id")
        job_node = g.node(
            f"job:{text(lineage.get('run_id'), 200)}:{text(job_id, 100)}", "job",
            f"{text(backend.get('name') or job.get('backend'), 60)} job {text(job_id, 60)}",
            _details([("job_id", job_id), ("host", job.get("host")),
                      ("nodes", job.get("node_names") or job.get("nodes")),
                      ("partition", job.get("partition")), ("gpus", _gpus(job)),
                      ("driver", job.get("driver_version")), ("cuda", job.get("cuda_version")),
                      ("state", job.get("state")), ("elapsed_s", job.get("elapsed_s"))]),
        )  # fmt: skip
        sha = artifact.get("sha256")
        art = g.node(
            f"artifact:{text(sha, 64)}", "artifact", f"sha256:{text(sha, 12)}",
            _details([("sha256", sha), ("size", artifact.get("size")), ("uri", artifact.get("uri"))]),
        )  # fmt: skip
        g.edge(commit_id, spec, "declares")
        g.edge(spec, run, "started")
        g.edge(run, job_node, "ran as")
        g.edge(job_node, art, "wrote")
        g.edge(art, head, "registered as")
        base = base_of(version)
        if base is not None:
            base_label = f"{base[0]}@{base[1]}"
            after = versions[index + 1] if index + 1 < len(versions) else {}
            known = (after.get("model"), after.get("number")) == base
            base_node = g.node(
                f"version:{base_label}", "version", base_label,
                _details([("version", base_label), ("ref", _mapping(lineage.get("base")).get("ref")),
                          ("sha256", _mapping(lineage.get("base")).get("sha256"))]),
                url=version_url(repository, *base) if known else None,
            )  # fmt: skip
            g.edge(base_node, run, "fine-tuned from")
    return g.doc()
