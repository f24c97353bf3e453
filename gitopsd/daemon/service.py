"""`gitopsd run`: the long-running service on a login node.

One worker per repository, fed by a poll timer, a watch on a local bare repository and forge webhooks; an HTTP
server for health, readiness, metrics, status, triggers, webhooks and the dashboard (/ui); the systemd notify
protocol (READY once every repository had its first pass, STATUS after each pass, WATCHDOG while every worker is
alive, RELOADING on SIGHUP, STOPPING on SIGTERM). SIGTERM lets each worker finish its current pass, so nothing is left
half-recorded, then exits 0. SIGHUP re-reads the configuration; an invalid one (a syntax error, a secret
reference that cannot be resolved) is logged as one line and the old one kept. Every secret (the API token, the webhook
secrets, `[environment]`) is read at start and again on SIGHUP, so a rotated secret takes effect without a
restart and the revoked one stops working. A changed `http.listen` or `http.local_listen` is rebound on SIGHUP
(the new address first; if it cannot be bound, the old one keeps serving and the error says why).
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
    resolve_environment,
    resolve_secret,
)
from gitopsd.daemon.courier import Courier
from gitopsd.daemon.exporter import Metrics
from gitopsd.daemon.httpapi import Api, HookTarget, HttpServer
from gitopsd.daemon.instance import InstanceLock
from gitopsd.daemon.leasefile import LeaseDir
from gitopsd.daemon.notify import Notifier
from gitopsd.daemon.standby import STATUS_FILE, Elector, Leased
from gitopsd.daemon.triggers import BareRepoWatch, PassReport, PollTimer, Worker
from gitopsd.errors import GitopsdError, PermanentError
from gitopsd.reconcile.launch import check_runs_dirs
from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.reconcile.statusview import read_status
from gitopsd.source.redact import redact_url
from gitopsd.ui.app import UiApp
from gitopsd.ui.views import UiContext

log = logging.getLogger("gitopsd")
STOP_GRACE_S = 8.0
COURIER_GRACE_S = 2.0


@dataclass
class RepoRuntime:
    config: RepositoryConfig
    state_dir: Path
    worker: Worker
    watch: BareRepoWatch | None = None
    elector: Elector | None = None
    secrets: dict[str, list[bytes]] = field(default_factory=dict)
    courier: Courier | None = None


class Daemon:
    def __init__(self, config_path: Path, *, listen: str | None = None) -> None:
        self.config_path = config_path
        self._listen_override = listen
        self.config: DaemonConfig = self._effective(load_config(config_path).for_daemon(config_path))
        check_runs_dirs(self.config.operator())
        self._environment = resolve_environment(self.config)
        self._token = _api_token(self.config.http)
        self.notifier = Notifier()
        self.repos: dict[str, RepoRuntime] = {}
        self.metrics = Metrics(lambda: {name: r.state_dir for name, r in self.repos.items()})
        self._wake = threading.Event()
        self._stop = False
        self._reload = False
        self._ready = False
        self._lock = threading.Lock()
        self._started_at = time.time()
        self._ui: tuple[DaemonConfig, UiContext] | None = None
        assert self.config.state_dir is not None  # for_daemon checked it
        self._instance = InstanceLock(self.config.state_dir)  # last: a refused start holds nothing

    # lifecycle ----------------------------------------------------------------------------------------------
    def run(self) -> int:
        logs.setup(self.config.log_level, self.config.log_format)
        apply_environment(self.config, self._environment)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        self.timer = PollTimer()
        self._web = self._api()
        self.http = self._first_listener(self.config.http.listen, local=False)
        self.local_http = (
            self._first_listener(local_listen, local=True) if (local_listen := self.config.http.local_listen) else None
        )
        self._listening = (self.config.http.listen, self.config.http.local_listen)
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
            if repo.elector is not None:
                repo.elector.stop()  # after the pass: its lease is released once nothing more is done
        for repo in self.repos.values():  # what is not delivered yet waits in state.db for the next start
            if repo.courier is not None:
                repo.courier.stop(max(0.1, min(COURIER_GRACE_S, deadline - time.monotonic())))
        self.http.stop()
        if self.local_http is not None:
            self.local_http.stop()
        if not clean:
            log.warning("a pass did not finish within %.0f s; its run rows say where it stopped", STOP_GRACE_S)
        self._instance.release()
        return 0

    # HTTP listeners -------------------------------------------------------------------------------------------
    def _effective(self, config: DaemonConfig) -> DaemonConfig:
        """`config` with `gitopsd run --listen` applied (the command line wins over the file)."""
        if self._listen_override is None:
            return config
        return config.model_copy(update={"http": _override_listen(config.http, self._listen_override)})

    def _serve(self, listen: str, *, local: bool) -> HttpServer:
        """Bind and start a listener; OSError if the address cannot be bound."""
        host, _, port = listen.rpartition(":")
        server = HttpServer(self._web.local if local else self._web, host.strip("[]"), int(port),
                            max_body=self.config.http.max_body_bytes)  # fmt: skip
        server.start()
        if local:
            log.info("gitopsd API without a token on http://%s:%d (loopback only, http.local_listen)",
                     server.host, server.port)  # fmt: skip
        else:
            guard = "the bearer token" if self._token else "a token, and none is configured: they answer 401"
            log.info("gitopsd listening on http://%s:%d (the API and /metrics need %s)", server.host, server.port,
                     guard)  # fmt: skip
        return server

    def _first_listener(self, listen: str, *, local: bool) -> HttpServer:
        """`_serve` at start: an address that cannot be bound stops the daemon with a PermanentError naming the
        setting, the file and the fix (a port another process holds, an address not of this host)."""
        try:
            return self._serve(listen, local=local)
        except OSError as exc:
            if local:  # the main listener is bound by now: close it, as a daemon that stops does
                self.http.stop()
            where = "--listen" if not local and self._listen_override is not None else (
                f"{'http.local_listen' if local else 'http.listen'} in {self.config_path}"
            )  # fmt: skip
            raise PermanentError(
                f"cannot listen on {listen} ({where}): {exc.strerror or exc}; another process holds the port or the "
                "address is not this host's: stop it or choose another port"
            ) from None

    def _rebind(self, old: HttpServer | None, listen: str | None, *, local: bool) -> tuple[HttpServer | None, bool]:
        """The listener for `listen` after a reload changed it, and whether it is bound there. The new address is
        bound before the old one closes, so no request is refused meanwhile; the same port on another host
        (bindable only once the old socket is closed) closes the old one first, and binds it again if the new
        address cannot be bound. None for an unset `local_listen`."""
        setting = "http.local_listen" if local else "http.listen"
        if listen is None:
            if old is not None:
                old.stop()
                log.info("%s removed: the listener on port %d was closed", setting, old.port)
            return None, True
        try:
            new = self._serve(listen, local=local)
        except OSError as first:
            if old is None or not listen.endswith(f":{old.port}"):
                log.error("%s = %r cannot be bound (%s); the old listener keeps serving", setting, listen,
                          first.strerror or first)  # fmt: skip
                return old, False
            old.stop()
            try:
                new = self._serve(listen, local=local)
            except OSError as second:
                log.error("%s = %r cannot be bound (%s); the old listener serves again", setting, listen,
                          second.strerror or second)  # fmt: skip
                return self._serve(f"{old.host}:{old.port}", local=local), False
            return new, True
        if old is not None:
            old.stop()
        return new, True

    # repositories -------------------------------------------------------------------------------------------
    def _start(self, repo: RepositoryConfig) -> None:
        state_dir = self.config.state_dir_of(repo)
        operator = self.config.operator_for(repo)
        verify = repo.verify.policy() if repo.verify else None
        limits = self.config.output_limits.limits()
        setup = self.config.settled_setup(repo)
        standby = self.config.standby
        elector = (
            Elector(repo.name, LeaseDir(Path(standby.lease_dir) / repo.name), standby.timing(),
                    status_path=state_dir / STATUS_FILE, identity=f"{redact_url(repo.url)}#{repo.branch or ''}",
                    on_active=lambda: worker.request("takeover"))
            if standby is not None else None
        )  # fmt: skip

        def make() -> Reconciler | Leased:
            inner = Reconciler(state_dir=state_dir, url=repo.url, branch=repo.branch, operator=operator,
                               verify=verify, limits=limits, fence=elector.fence if elector else None,
                               setup=setup, role="daemon")  # fmt: skip
            return Leased(inner, elector) if elector is not None else inner

        worker = Worker(
            repo.name,
            make,
            on_pass=self._passed,
            beat_s=min(30.0, self.notifier.watchdog_s / 3) if self.notifier.watchdog_s else 30.0,
        )
        runtime = RepoRuntime(config=repo, state_dir=state_dir, worker=worker, secrets=self._secrets(repo),
                              elector=elector, courier=Courier(repo.name, state_dir / "state.db",
                                                               self.config.notifications))  # fmt: skip
        self.repos[repo.name] = runtime
        worker.start()
        if runtime.courier is not None:
            runtime.courier.start()
        if elector is not None:
            elector.start()
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
        if runtime.elector is not None:
            runtime.elector.stop()
        if runtime.courier is not None:
            runtime.courier.stop(COURIER_GRACE_S)

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
            new = self._effective(load_config(self.config_path).for_daemon(self.config_path))
            check_runs_dirs(new.operator())
            token = _api_token(new.http)
            environment = resolve_environment(new)
        except GitopsdError as exc:
            log.error("reload refused, the running configuration stays: %s", _one_line(str(exc)))
            self.notifier.ready(self._summary())
            return
        with self._lock:
            old = {
                r.name: (r, self.config.operator_for(r), self.config.output_limits, self.config.standby)
                for r in self.config.repositories
            }
            self.config = new
            self._token = token
            logs.setup(new.log_level, new.log_format)
            apply_environment(new, environment)
            wanted = {r.name: (r, new.operator_for(r), new.output_limits, new.standby) for r in new.repositories}
            for name in [n for n in self.repos if wanted.get(n) != old.get(n)]:
                self._stop_repo(name)
            for runtime in self.repos.values():  # kept repositories: their secret files may have been rotated,
                runtime.secrets = self._secrets(runtime.config)  # and what stalled may have been fixed
                runtime.worker.retry_stalled()
                if runtime.courier is not None:
                    runtime.courier.configure(new.notifications)
                    runtime.courier.retry_stalled()
            for name, (repo, *_) in wanted.items():
                if name not in self.repos:
                    self._start(repo)
            self._reload_http(new)
        log.info("configuration reloaded: %d repositories", len(new.repositories))
        self.notifier.ready(self._summary())

    def _reload_http(self, new: DaemonConfig) -> None:
        for server in (self.http, self.local_http):
            if server is not None:
                server.set_max_body(new.http.max_body_bytes)
        listen, local_listen = new.http.listen, new.http.local_listen
        if listen != self._listening[0]:
            server, bound = self._rebind(self.http, listen, local=False)
            self.http = server or self.http
            if bound:
                self._listening = (listen, self._listening[1])
        if local_listen != self._listening[1]:
            self.local_http, bound = self._rebind(self.local_http, local_listen, local=True)
            if bound:
                self._listening = (self._listening[0], local_listen)

    # reporting ----------------------------------------------------------------------------------------------
    def _passed(self, report: PassReport) -> None:
        runtime = self.repos.get(report.repository)
        if runtime is not None and runtime.courier is not None:
            runtime.courier.enqueue()  # in the worker's thread, between passes: reads and INSERTs, no network
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
            ui=UiApp(self._ui_context, token=lambda: self._token,
                     on_unauthorized=lambda endpoint: self.metrics.unauthorized.labels(endpoint).inc()),
        )  # fmt: skip

    def _ui_context(self) -> UiContext:
        """What the dashboard shows: this configuration's repositories (rebuilt after a reload changed it)."""
        config = self.config
        if self._ui is None or self._ui[0] is not config:
            self._ui = (config, ui_context(config, started_at=self._started_at))
        return self._ui[1]


def ui_context(config: DaemonConfig, *, started_at: float) -> UiContext:
    """The dashboard's view of a configuration: each repository's state directory and commit link, the backends,
    and the GPU lease book of the nvidia backend (its `leases` setting, else the shared state directory's)."""
    assert config.state_dir is not None  # for_daemon checked it
    leases = next((Path(str(b.settings["leases"])) for name, b in config.backends.items()
                   if (b.type or name) == "nvidia" and b.settings.get("leases")), None)  # fmt: skip
    return UiContext(
        sources={r.name: config.state_dir_of(r) for r in config.repositories},
        commit_urls={r.name: r.commit_url for r in config.repositories if r.commit_url},
        backends=tuple({"name": name, "type": backend.type or name} for name, backend in config.backends.items()),
        lease_book=leases or config.state_dir / "nvidia" / "leases.db",
        started_at=started_at,
    )


def _override_listen(http: HttpConfig, listen: str) -> HttpConfig:
    """`http` with `gitopsd run --listen`, checked like the configuration file's own address."""
    try:
        return HttpConfig.model_validate({**http.model_dump(), "listen": listen})
    except ValidationError as exc:
        raise PermanentError("; ".join(f"--listen {listen}: {e['msg']}" for e in exc.errors())) from None


def _one_line(message: str) -> str:
    """A multi-line error (one line per configuration problem) as one log line."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _api_token(http: HttpConfig) -> bytes | None:
    """The API's bearer token, read from its reference (None when none is configured)."""
    if http.token is None:
        return None
    return check_token(resolve_secret(http.token), http.token)
