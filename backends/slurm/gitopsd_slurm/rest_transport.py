"""The `rest` transport: slurmrestd's OpenAPI (v0.0.38 for Slurm 22.05 by default), authenticated by JWT.

For sites where the daemon's host has no Slurm client tools, or where a REST gateway is the sanctioned way in.
Every request carries `X-SLURM-USER-NAME` and `X-SLURM-USER-TOKEN` (slurmrestd accepts no `Authorization:
Bearer`). The token comes from a file (re-read when it changes), an environment variable, or `scontrol token`,
refreshed before it expires. HTTP goes through an injected `Http`, so the request builders and the answers'
parsing are tested on JSON recorded from a real slurmrestd. Its quirks: `#SBATCH` lines are ignored (the job's
options travel as fields), `environment` is required, and an expired or wrong token, like a controller that is
down, is answered with HTTP 500 "Unspecified error".
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gitopsd.errors import BackendUnavailable, PermanentError, TransientError
from gitopsd_slurm.records import NodeInfo, SlurmJob, jobs_from_json, json_errors, nodes_from_json
from gitopsd_slurm.script import JobRequest
from gitopsd_slurm.settings import RestSettings
from gitopsd_slurm.states import is_refusal, refusal_hint
from gitopsd_slurm.transport import Runner

GONE = ("invalid job id", "already completing or completed")


@dataclass(frozen=True, kw_only=True)
class HttpResponse:
    status: int
    body: bytes = b""


class Http(Protocol):
    def __call__(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None, timeout_s: float
    ) -> HttpResponse:
        """Send one request; an HTTP error status is a response, an unreachable server raises OSError."""


def urllib_http(
    method: str, url: str, *, headers: Mapping[str, str], body: bytes | None, timeout_s: float
) -> HttpResponse:
    """`Http` over the standard library."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return HttpResponse(status=response.status, body=response.read())
    except urllib.error.HTTPError as exc:
        return HttpResponse(status=exc.code, body=exc.read())


def submit_body(request: JobRequest) -> dict[str, Any]:
    """The `POST /job/submit` document: the script plus the options slurmrestd will not read from it."""
    o = request.options
    job: dict[str, Any] = {
        "name": o.name,
        "comment": o.comment,
        "current_working_directory": o.chdir,
        "standard_output": o.output,
        "environment": dict(request.environment),
        "nodes": [o.nodes, o.nodes],
        "tasks": o.ntasks,
        "cpus_per_task": o.cpus_per_task,
        "requeue": o.requeue,
    }
    optional = {
        "partition": o.partition,
        "account": o.account,
        "qos": o.qos,
        "constraints": o.constraint,
        "time_limit": o.time_limit_min,
        "memory_per_node": o.memory_mb,
        "gpus": str(o.gpus) if o.gpus else None,
        "exclusive": "exclusive" if o.exclusive else None,
        "array": o.array,
        "signal": o.signal,
    }
    job.update({key: value for key, value in optional.items() if value is not None})
    return {"script": request.script, "job": job}


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT (not verified: only slurmctld can, and will)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def parse_scontrol_token(stdout: str) -> str:
    """The token of `scontrol token` ("SLURM_JWT=eyJ..."). ValueError if there is none."""
    for line in stdout.splitlines():
        if line.startswith("SLURM_JWT="):
            return line.removeprefix("SLURM_JWT=").strip()
    raise ValueError(f"scontrol token printed no SLURM_JWT= line: {stdout.strip()[:200]!r}")


class TokenSource:
    """The JWT to send: from `rest.token_file`, `rest.token_env`, or `scontrol token` (renewed when less than a
    fifth of its lifespan is left)."""

    def __init__(
        self,
        *,
        backend: str,
        rest: RestSettings,
        runner: Runner,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.backend, self.rest, self.runner, self.timeout_s = backend, rest, runner, timeout_s
        self.clock, self.environ = clock, environ
        self.user = rest.user or getpass.getuser()
        self._token: str | None = None
        self._expires: float | None = None
        self._file_stamp: tuple[int, int] | None = None

    def get(self) -> str:
        if self.rest.token_file is not None:
            return self._from_file()
        if self.rest.token_env is not None:
            token = self.environ.get(self.rest.token_env, "").strip().removeprefix("SLURM_JWT=")
            if not token:
                raise BackendUnavailable(
                    f"backend {self.backend!r} setting rest.token_env: {self.rest.token_env} is not set in "
                    "gitopsd's environment"
                )
            return token
        margin = self.rest.token_lifespan_s / 5
        if self._token is None or (self._expires is not None and self.clock() > self._expires - margin):
            self._token = self._from_scontrol()
            self._expires = jwt_expiry(self._token)
        return self._token

    def renew(self) -> bool:
        """After a rejection: get a token again; True if it differs from the one that was rejected."""
        before = self._token
        if self.rest.token_file is None and self.rest.token_env is None:
            self._token = None
        self._file_stamp = None
        try:
            after = self.get()
        except BackendUnavailable:
            return False
        return after != before and self.rest.token_env is None

    def _from_file(self) -> str:
        path = self.rest.token_file
        assert path is not None
        try:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if self._token is None or stamp != self._file_stamp:
                self._token = path.read_text(encoding="utf-8").strip().removeprefix("SLURM_JWT=")
                self._file_stamp = stamp
        except OSError as exc:
            raise BackendUnavailable(
                f"backend {self.backend!r} setting rest.token_file: cannot read {path}: {exc.strerror}"
            ) from None
        if not self._token:
            raise BackendUnavailable(f"backend {self.backend!r} setting rest.token_file: {path} is empty")
        return self._token

    def _from_scontrol(self) -> str:
        argv = ["scontrol", "token", f"username={self.user}", f"lifespan={self.rest.token_lifespan_s}"]
        result = self.runner(argv, timeout_s=self.timeout_s)
        try:
            if result.returncode != 0:
                raise ValueError(result.why())
            return parse_scontrol_token(result.stdout)
        except ValueError as exc:
            raise BackendUnavailable(
                f"backend {self.backend!r}: no REST token: `{' '.join(argv)}` failed: {exc} "
                "(or set rest.token_file / rest.token_env)"
            ) from None


class RestTransport:
    """Talks to one cluster through slurmrestd. See the module docstring."""

    name = "rest"

    def __init__(self, *, backend: str, rest: RestSettings, tokens: TokenSource, http: Http, timeout_s: float) -> None:
        self.backend, self.rest, self.tokens, self.http, self.timeout_s = backend, rest, tokens, http, timeout_s
        self.base = f"{rest.url}/slurm/{rest.api_version}"

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """One request, its status and its JSON; the token is renewed and the request sent once more if it was
        rejected. BackendUnavailable if slurmrestd cannot be reached."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            headers = {
                "X-SLURM-USER-NAME": self.tokens.user,
                "X-SLURM-USER-TOKEN": self.tokens.get(),
                "Accept": "application/json",
            }
            if data is not None:
                headers["Content-Type"] = "application/json"
            try:
                response = self.http(method, self.base + path, headers=headers, body=data, timeout_s=self.timeout_s)
            except OSError as exc:
                raise BackendUnavailable(
                    f"backend {self.backend!r}: slurmrestd at {self.rest.url} cannot be reached: {exc}"
                ) from None
            doc = _json(response.body)
            rejected = response.status in (401, 403) or (response.status == 500 and "Unspecified" in _why(doc))
            if not (rejected and attempt == 1 and self.tokens.renew()):
                return response.status, doc
        raise AssertionError("unreachable")

    def _unavailable(self, what: str, status: int, doc: Mapping[str, Any]) -> BackendUnavailable:
        why = _why(doc) or "no error text"
        if status in (401, 403) or "Unspecified" in why:
            why += (
                f" (slurmrestd answers this when slurmctld is down, and also when the JWT for user "
                f"{self.tokens.user!r} is expired or wrong)"
            )
        return BackendUnavailable(f"backend {self.backend!r}: {what} via {self.rest.url}: HTTP {status}: {why}")

    def ping(self) -> None:
        status, doc = self._call("GET", "/ping")
        pings = doc.get("pings") or []
        if status != 200 or not any(str(p.get("ping", "")).upper() == "UP" for p in pings):
            raise self._unavailable("ping", status, doc)

    def submit(self, request: JobRequest) -> str:
        status, doc = self._call("POST", "/job/submit", submit_body(request))
        job_id = doc.get("job_id")
        if status == 200 and job_id is not None:
            return str(job_id)
        why = _why(doc)
        if is_refusal(why) or status == 400:
            raise PermanentError(
                f"backend {self.backend!r}: Slurm refused the job of run {request.run_id}: HTTP {status}: {why}"
                + refusal_hint(why, user=self.tokens.user, account=request.options.account)
            )
        if status >= 500:
            raise self._unavailable(f"submitting run {request.run_id}", status, doc)
        raise TransientError(f"backend {self.backend!r}: submitting run {request.run_id}: HTTP {status}: {why}")

    def list_jobs(self) -> list[SlurmJob]:
        status, doc = self._call("GET", "/jobs")
        if status != 200 or (not doc.get("jobs") and json_errors(doc)):
            raise self._unavailable("listing jobs", status, doc)
        return jobs_from_json(doc, source="rest")

    def cancel(self, job_id: str) -> None:
        status, doc = self._call("DELETE", f"/job/{job_id}")
        if status != 200 and not any(words in _why(doc).lower() for words in GONE):
            raise self._unavailable(f"cancelling job {job_id}", status, doc)

    def nodes(self) -> list[NodeInfo]:
        status, doc = self._call("GET", "/nodes")
        if status != 200:
            raise self._unavailable("listing nodes", status, doc)
        return nodes_from_json(doc)

    def accounting(self, job_ids: Sequence[str]) -> list[SlurmJob] | None:
        return None  # slurmdbd's REST plugin is not used yet: the run directory's files resolve vanished jobs

    def accounting_by_name(self, name: str) -> list[SlurmJob] | None:
        return None


def _json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return {"errors": [{"error": body[:300].decode(errors="replace")}]}
    return doc if isinstance(doc, dict) else {}


def _why(doc: Mapping[str, Any]) -> str:
    return "; ".join(json_errors(doc))
