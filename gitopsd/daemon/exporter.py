"""Prometheus metrics of the daemon.

Counters and the pass-duration histogram are updated as things happen; the gauges that describe state (runs by
phase, versions registered, when the applied commit was applied) are read from the repositories' databases at
scrape time, read-only, so they are always true and cost nothing between scrapes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry


class StateCollector(Collector):
    def __init__(self, state_dirs: Callable[[], Mapping[str, Path]]) -> None:
        self._state_dirs = state_dirs

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        runs = GaugeMetricFamily("gitopsd_runs", "Runs by phase.", labels=["repository", "phase"])
        versions = GaugeMetricFamily("gitopsd_versions_registered", "Registered versions.", labels=["repository"])
        applied = GaugeMetricFamily(
            "gitopsd_last_applied_commit_timestamp_seconds", "When the applied commit was applied.",
            labels=["repository"],
        )  # fmt: skip
        sent = CounterMetricFamily(
            "gitopsd_notifications", "Notification deliveries by sink and result (delivered, failed attempts, "
            "dropped).", labels=["repository", "sink", "result"],
        )  # fmt: skip
        waiting = GaugeMetricFamily(
            "gitopsd_notifications_pending", "Notifications waiting to be delivered, by sink.",
            labels=["repository", "sink"],
        )  # fmt: skip
        for name, state_dir in sorted(self._state_dirs().items()):
            for sink, result, count in _rows(state_dir / "state.db", "SELECT sink, result, count FROM delivery_counts"):
                sent.add_metric([name, str(sink), str(result)], float(count))
            for sink, count in _rows(state_dir / "state.db", "SELECT sink, count(*) FROM deliveries GROUP BY sink"):
                waiting.add_metric([name, str(sink)], float(count))
            for phase, count in _rows(state_dir / "state.db", "SELECT phase, count(*) FROM runs GROUP BY phase"):
                runs.add_metric([name, str(phase)], float(count))
            for (count,) in _rows(state_dir / "registry.db", "SELECT count(*) FROM versions"):
                versions.add_metric([name], float(count))
            for (at,) in _rows(state_dir / "state.db", "SELECT applied_at FROM sources WHERE id = 1"):
                if at is not None:
                    applied.add_metric([name], float(at))
        yield runs
        yield versions
        yield applied
        yield sent
        yield waiting


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return [tuple(r) for r in conn.execute(sql)]
        finally:
            conn.close()
    except sqlite3.Error:
        return []


class Metrics:
    def __init__(self, state_dirs: Callable[[], Mapping[str, Path]]) -> None:
        self.registry = CollectorRegistry()
        self.pass_seconds = Histogram(
            "gitopsd_reconcile_duration_seconds", "Duration of reconcile passes.", ["repository"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=self.registry,
        )  # fmt: skip
        self.passes = Counter(
            "gitopsd_reconcile_passes_total", "Reconcile passes by trigger.", ["repository", "trigger"],
            registry=self.registry,
        )  # fmt: skip
        self.deliveries = Counter(
            "gitopsd_webhook_deliveries_total", "Webhook deliveries by result.", ["provider", "result"],
            registry=self.registry,
        )  # fmt: skip
        self.backend_errors = Counter(
            "gitopsd_backend_errors_total", "Passes that found a backend unavailable.", ["repository", "backend"],
            registry=self.registry,
        )  # fmt: skip
        self.unauthorized = Counter(
            "gitopsd_http_unauthorized_total", "API and metrics requests refused for a missing or wrong token.",
            ["endpoint"], registry=self.registry,
        )  # fmt: skip
        self.pass_errors = Counter(
            "gitopsd_reconcile_errors_total", "Passes that failed.", ["repository"], registry=self.registry
        )
        self.registry.register(StateCollector(state_dirs))
