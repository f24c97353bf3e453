"""TEMPORARY stand-in for the i15-data helper's views (deleted before merging branch i15-data).

Only the signatures the HTTP shell calls, with just enough behind them to test the shell over real state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitopsd.reconcile.statusview import read_status


@dataclass(frozen=True)
class UiContext:
    sources: dict[str, Path]
    commit_urls: dict[str, str] = field(default_factory=dict)
    backends: tuple[tuple[str, str], ...] = ()
    lease_book: Path | None = None
    started_at: float = field(default_factory=time.time)


def overview(ctx: UiContext) -> dict[str, Any]:
    models = []
    for name, path in sorted(ctx.sources.items()):
        for m in read_status(path)["models"]:
            models.append({"repository": name, **m})
    return {"generated_at": time.time(), "repositories": [], "models": models, "facets": {}}


def model_page(ctx: UiContext, repo: str, model: str) -> dict[str, Any] | None:
    if repo not in ctx.sources:
        return None
    found = [m for m in read_status(ctx.sources[repo])["models"] if m["name"] == model]
    return {"repository": repo, "name": model, "runs": [], "status": found[0]} if found else None


def run_metrics(ctx: UiContext, repo: str, run_id: str, *, points: int = 1000, since: int = 0) -> dict[str, Any] | None:
    return None


def run_log(ctx: UiContext, repo: str, run_id: str, *, nbytes: int = 16384) -> dict[str, Any] | None:
    return None


def version_page(ctx: UiContext, repo: str, model: str, number: int) -> dict[str, Any] | None:
    return None


def cluster(ctx: UiContext) -> dict[str, Any]:
    return {"gpus": None, "gpus_error": None, "backends": [], "queue": []}


def heartbeat(ctx: UiContext) -> dict[str, Any]:
    return {"started_at": ctx.started_at}
