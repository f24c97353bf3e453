"""`gitopsd run`: the long-running service on a login node.

One worker per repository, fed by a poll timer, a watch on a local bare repository and forge webhooks; an HTTP
server for health, readiness, metrics, status, triggers and webhooks; the systemd notify protocol (READY once
every repository had its first pass, STATUS after each pass, WATCHDOG while every worker is alive, RELOADING on
SIGHUP, STOPPING on SIGTERM). SIGTERM lets each worker finish its current pass, so nothing is left
half-recorded, then exits 0. SIGHUP re-reads the configuration; an invalid one is logged and the old one kept.
The API token is read at start and again on SIGHUP (so a rotated token takes effect without a restart); the
listen addresses are bound once, at start.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from gitopsd.daemon import logs
from gitopsd.daemon.apiauth import check_token
from gitopsd.daemon.config import (
    DaemonConfig,
    HttpConfig,
    RepositoryConfig,
    apply_environment,
    load_config,
    resolve_secret,
)
from gitopsd.daemon.exporter import Metrics
from gitopsd.daemon.httpapi import Api, HookTarget, HttpServer
from gitopsd.daemon.notify import Notifier
from gitopsd.daemon.triggers import BareRepoWatch, PassReport, PollTimer, Worker
from gitopsd.errors import GitopsdError, PermanentError
from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.reconcile.statusview import read_status
from gitopsd.source.redact import redact_url

log = logging.getLogger("gitopsd")
STOP_GRACE_S = 8.0


@dataclass
class RepoRuntime:
    config: RepositoryConfig
    state_dir: Path
    worker: Worker
    watch: BareRepoWatch | None = None
    secrets: dict[str, list[bytes]] = field(default_factory=dict)


class Daemon:
    def __init__(self, config_path: Path, *, listen: str | None = None) -> None:
        self.config_path = config_path
        self.config: DaemonConfig = load_config(config_path).for_daemon(config_path)
        self._bound = (self.config.http.listen, self.config.http.local_listen)  # as the file says; bound once
        if listen is not None:
            self.config = self.config.model_copy(update={"http": _override_listen(self.config.http, listen)})
        self._token = _api_token(self.config.http)
        self.notifier = Notifier()
        self.repos: dict[str, RepoRuntime] = {}
        self.metrics = Metrics(lambda: {name: r.state_dir for name, r in self.repos.items()})
        self._wake = threading.Event()
        self._stop = False
        self._reload = False
        self._ready = False
        self._lock = threading.Lock()

    # lifecycle ----------------------------------------------------------------------------------------------
    def run(self) -> int:
        logs.setup(self.config.log_level, self.config.log_format)
        apply_environment(self.config)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        self.timer = PollTimer()
        api = self._api()
        host, port = self.config.http.address()
        self.http = HttpServer(api, host, port)
        self.http.start()
        guard = "the bearer token" if self._token else "a token, and none is configured: they answer 401"
        log.info("gitopsd listening on http://%s:%d (the API and /metrics need %s)", host, self.http.port, guard)
        self.local_http: HttpServer | None = None
        if self.config.http.local_listen:
            local_host, _, local_port = self.config.http.local_listen.rpartition(":")
            self.local_http = HttpServer(api.local, local_host.strip("[]"), int(local_port))
            self.local_http.start()
            log.info("gitopsd API without a token on http://%s:%d (loopback only, http.local_listen)",
                     local_host.strip("[]"), self.local_http.port)  # fmt: skip
        for repo in self.config.repositories:
            self._start(repo)
        self._loop()
        return self._shutdown()

    def _loop(self) -> None:
        tick = self.notifier.watchdog_s / 3 if self.notifier.watchdog_s else 30.0
        while not self._stop:
            self._wake.wait(timeout=tick)
            self._wake.clear()
            if self._reload:
                self._reload = False
                self._reconfigure()
            if not self._ready and all(r.worker.first_pass.is_set() for r in self.repos.values()):
                self._ready = True
                self.notifier.ready(self._summary())
                log.info("gitopsd ready: %s", self._summary())
            if self.notifier.watchdog_s and self._alive():
                self.notifier.watchdog()

    def _alive(self) -> bool:
        """Every worker has gone round its loop recently (a hung pass stops the pings; systemd restarts us)."""
        limit = max(self.notifier.watchdog_s or 0.0, 1.0)
        now = time.monotonic()
        return all(now - r.worker.last_beat < limit and r.worker.thread.is_alive() for r in self.repos.values())

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True
        self._wake.set()

    def _shutdown(self) -> int:
        self.notifier.stopping()
        log.info("gitopsd stopping: finishing current passes")
        self.timer.shutdown()
        clean = True
        for repo in self.repos.values():
            if repo.watch:
                repo.watch.stop()
        deadline = time.monotonic() + STOP_GRACE_S
        for repo in self.repos.values():
            clean &= repo.worker.stop(max(0.1, deadline - time.monotonic()))
        self.http.stop()
        if self.local_http is not None:
            self.local_http.stop()
        if not clean:
            log.warning("a pass did not finish within %.0f s; its run rows say where it stopped", STOP_GRACE_S)
        return 0

    # repositories -------------------------------------------------------------------------------------------
    def _start(self, repo: RepositoryConfig) -> None:
        state_dir = self.config.state_dir_of(repo)
        operator = self.config.operator_for(repo)
        verify = repo.verify.policy() if repo.verify else None
        limits = self.config.output_limits.limits()
        worker = Worker(
            repo.name,
            lambda: Reconciler(
                state_dir=state_dir, url=repo.url, branch=repo.branch, operator=operator, verify=verify, limits=limits
            ),
            on_pass=self._passed,
            beat_s=min(30.0, self.notifier.watchdog_s / 3) if self.notifier.watchdog_s else 30.0,
        )
        runtime = RepoRuntime(config=repo, state_dir=state_dir, worker=worker, secrets=self._secrets(repo))
        self.repos[repo.name] = runtime
        worker.start()
        self.timer.every(repo.name, repo.poll_interval, lambda: worker.request("poll"))
        watched = repo.watched()
        if watched is not None:
            runtime.watch = BareRepoWatch(watched, lambda: worker.request("push"))
            runtime.watch.start()
        log.info("repository %s: %s (poll every %d s%s)", repo.name, redact_url(repo.url), repo.poll_interval,
                 f", watching {watched}" if watched else "", extra={"repository": repo.name})  # fmt: skip

    def _stop_repo(self, name: str) -> None:
        runtime = self.repos.pop(name)
        self.timer.cancel(name)
        if runtime.watch:
            runtime.watch.stop()
        runtime.worker.stop(STOP_GRACE_S)

    @staticmethod
    def _secrets(repo: RepositoryConfig) -> dict[str, list[bytes]]:
        secrets: dict[str, list[bytes]] = {}
        for provider, ref in repo.webhooks.model_dump().items():
            if ref:
                try:
                    secrets[provider] = [resolve_secret(ref)]
                except GitopsdError as exc:
                    log.error("repository %s: %s webhook disabled: %s", repo.name, provider, exc)
        return secrets

    def _reconfigure(self) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.config_path).for_daemon(self.config_path)
            token = _api_token(new.http)
        except GitopsdError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            self.notifier.ready(self._summary())
            return
        with self._lock:
            old = {
                r.name: (r, self.config.operator_for(r), self.config.output_limits) for r in self.config.repositories
            }
            if (new.http.listen, new.http.local_listen) != self._bound:
                log.warning("http.listen and http.local_listen take effect at the next start, not on reload")
            self.config = new
            self._token = token
            logs.setup(new.log_level, new.log_format)
            apply_environment(new)
            wanted = {r.name: (r, new.operator_for(r), new.output_limits) for r in new.repositories}
            for name in [n for n in self.repos if wanted.get(n) != old.get(n)]:
                self._stop_repo(name)
            for name, (repo, _, _) in wanted.items():
                if name not in self.repos:
                    self._start(repo)
        log.info("configuration reloaded: %d repositories", len(new.repositories))
        self.notifier.ready(self._summary())

    # reporting ----------------------------------------------------------------------------------------------
    def _passed(self, report: PassReport) -> None:
        self.metrics.pass_seconds.labels(report.repository).observe(report.seconds)
        self.metrics.passes.labels(report.repository, report.trigger.split(":")[0]).inc()
        if report.error:
            self.metrics.pass_errors.labels(report.repository).inc()
        elif report.result is not None:
            for backend in report.result.unavailable:
                self.metrics.backend_errors.labels(report.repository, backend).inc()
        if self._ready:
            self.notifier.status(self._summary())
        else:
            self._wake.set()  # the main loop checks whether every repository has had its first pass

    def _summary(self) -> str:
        parts = []
        for name, repo in sorted(self.repos.items()):
            doc = read_status(repo.state_dir)
            models = doc["models"]
            ready = sum(1 for m in models if m["ready"])
            applied = ((doc["repository"] or {}).get("applied_commit") or "none")[:12]
            parts.append(f"{name}: {ready}/{len(models)} ready at {applied}")
        return "; ".join(parts)

    def _status(self, repo: str | None) -> Any:
        if repo is not None:
            runtime = self.repos.get(repo)
            return read_status(runtime.state_dir) if runtime else None
        if len(self.repos) == 1:
            return read_status(next(iter(self.repos.values())).state_dir)
        return {"repositories": {name: read_status(r.state_dir) for name, r in sorted(self.repos.items())}}

    def _api(self) -> Api:
        return Api(
            registry=self.metrics.registry,
            targets=lambda: [
                HookTarget(name=n, branch=r.config.branch, secrets=r.secrets, trigger=r.worker.request)
                for n, r in sorted(self.repos.items())
            ],
            ready=lambda: self._ready,
            status=self._status,
            max_body=lambda: self.config.http.max_body_bytes,
            on_delivery=lambda provider, result: self.metrics.deliveries.labels(provider, result).inc(),
            token=lambda: self._token,
            on_unauthorized=lambda endpoint: self.metrics.unauthorized.labels(endpoint).inc(),
        )


def _override_listen(http: HttpConfig, listen: str) -> HttpConfig:
    """`http` with `gitopsd run --listen`, checked like the configuration file's own address."""
    try:
        return HttpConfig.model_validate({**http.model_dump(), "listen": listen})
    except ValidationError as exc:
        raise PermanentError("; ".join(f"--listen {listen}: {e['msg']}" for e in exc.errors())) from None


def _api_token(http: HttpConfig) -> bytes | None:
    """The API's bearer token, read from its reference (None when none is configured)."""
    if http.token is None:
        return None
    return check_token(resolve_secret(http.token), http.token)
