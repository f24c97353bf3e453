"""The `gitopsd` command line: a thin shell over the reconciler, the registry and the status view.

Each command imports only what it needs, so `gitopsd status` stays fast on a login node. Exit codes: 0 ok,
1 failure (including invalid specs and failed verification), 2 usage; `status` exits 3 when a state directory
has no status yet (nothing reconciled it, or its daemon has not finished a pass) and says which.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitopsd.cli import comment as _comment  # noqa: F401  (each module declares its commands)
from gitopsd.cli import daemon as _daemon  # noqa: F401
from gitopsd.cli import doctor as _doctor  # noqa: F401
from gitopsd.cli import registry as _registry  # noqa: F401
from gitopsd.cli import ui as _ui  # noqa: F401
from gitopsd.cli import usage as _usage  # noqa: F401
from gitopsd.cli.args import Context, UsageError, arg, command, config_opt, group, opt, path_arg
from gitopsd.cli.common import DEFAULT_STATE_DIR, fail, operator, output_limits, settled_setup, state_dir, verify_policy
from gitopsd.cli.console import echo

if TYPE_CHECKING:
    import argparse

    from gitopsd.reconcile.planner import Action
    from gitopsd.reconcile.reconciler import Reconciler
    from gitopsd.source.verify import VerifyPolicy

group("", "gitopsd: declare models in Git; gitopsd trains them and registers immutable versions.")

#: The options before the command, for every command: they make its Context.
TOP_OPTIONS = (
    opt(
        "--state-dir",
        dest="_state_dir",
        metavar="PATH",
        type=Path,
        envvar="GITOPSD_STATE_DIR",
        default=DEFAULT_STATE_DIR,
        help="Where gitopsd keeps its databases, mirror, runs and artifacts [env: GITOPSD_STATE_DIR].  "
        "[default: $XDG_STATE_HOME/gitopsd, else ~/.local/state/gitopsd]",
    ),
    opt(
        "--config",
        dest="_config",
        metavar="FILE",
        type=path_arg(exists=True, dir_okay=False),
        envvar="GITOPSD_CONFIG",
        help="The operator's configuration: backends, artifact store, limits (default: "
        "$XDG_CONFIG_HOME/gitopsd/config.toml if it exists, else one local backend) [env: GITOPSD_CONFIG].",
    ),
    opt("-v", "--verbose", dest="_verbose", flag=True, help="Log every step."),
)


def _context(namespace: argparse.Namespace, *, logs: bool = True) -> Context:
    """The top-level options as every command sees them, with logging set up as --verbose asks (unless the
    command does not log: `command(..., logs=False)`)."""
    ctx = Context(state_dir=namespace._state_dir.expanduser().absolute(), config=namespace._config,
                  verbose=namespace._verbose)  # fmt: skip
    if logs:
        setup_logging(ctx)
    return ctx


def setup_logging(ctx: Context) -> None:
    """Log records to stderr, credentials in URLs redacted, repeats said once, at INFO (DEBUG with --verbose)."""
    import logging

    from gitopsd.daemon.logdedup import RepeatFilter
    from gitopsd.daemon.logs import RedactUrls, TextFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactUrls())  # no credential in a URL reaches the terminal, whoever logs it
    handler.addFilter(RepeatFilter())  # `reconcile --wait` meets the same warning on every pass: say it once
    handler.setFormatter(TextFormatter())  # no escape sequence either, and no line that passes for a log line
    logging.basicConfig(level=logging.DEBUG if ctx.verbose else logging.INFO, handlers=[handler])
    if not ctx.verbose:  # "Found credentials in environment variables." is no news on a terminal
        for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@command(
    "init",
    arg("directory", type=Path),
    opt(
        "--ci-only",
        flag=True,
        help="Add only the CI files (.github/workflows/gitopsd.yml, .gitlab-ci.yml) to the existing repository "
        "DIRECTORY, never over a file that exists; commit them yourself.",
    ),
)
def init(ctx: Context, directory: Path, ci_only: bool) -> None:
    """Create a demo GitOps repository in DIRECTORY, with one commit and CI files that plan every pull request."""
    from gitopsd.cli.scaffold import init_demo, write_ci_files

    if ci_only:
        try:
            done = write_ci_files(directory)
        except OSError as exc:
            fail(str(exc))
        for rel in done.written:
            echo(f"wrote {directory / rel}")
        for rel in done.skipped:
            echo(f"skipped {directory / rel}: it exists (compare it with `gitopsd init` in an empty directory)")
        if done.written:
            echo("next: commit them, and see their comments for the token and variables they use")
        return
    try:
        commit = init_demo(directory)
    except FileExistsError as exc:
        fail(str(exc))
    echo(f"created {directory} at commit {commit[:12]}: one model (blobs), trained in about a second")
    echo("with .github/workflows/gitopsd.yml and .gitlab-ci.yml: they plan every pull/merge request")
    echo(f"next: gitopsd reconcile --repo {directory} --wait && gitopsd status")


@command("validate", arg("path", optional=True, type=Path, default="."))
def validate(ctx: Context, path: Path) -> None:
    """Check the spec files of a working tree (default: the current directory); exit 1 on any problem."""
    from gitopsd.backends.settingcheck import backend_setting_problems
    from gitopsd.errors import SpecError
    from gitopsd.spec.layout import REPO_SPEC, SPEC_DIR
    from gitopsd.spec.worktree import load_tree

    if path.is_dir() and not (path / REPO_SPEC).exists() and not (path / SPEC_DIR).exists():
        fail(f"{path} has neither {REPO_SPEC} nor {SPEC_DIR}/: give the root of the repository's working tree")
    try:
        specs = load_tree(path, operator(ctx))
        problems = backend_setting_problems(specs.repo)
        if problems:
            raise SpecError(problems)
    except SpecError as exc:
        for problem in exc.problems:
            echo(str(problem), err=True)
        fail(f"{exc.total} problem(s) in {path}")
    names = ", ".join(sorted(m.name for m in specs.models.values())) or "none"
    echo(f"{path}: valid; {len(specs.models)} model(s): {names}")


@command("schema")
def schema(ctx: Context) -> None:
    """Print the JSON Schema of spec files (for editors and CI)."""
    import json

    from gitopsd.spec.schema import json_schema

    echo(json.dumps(json_schema(), indent=2))


#: --verify-allowed-signers, --verify-gpg-keyring, --verify-since: refuse commits not signed by allowed keys.
VERIFY_OPTIONS = (
    opt(
        "--verify-allowed-signers",
        metavar="PATH",
        type=path_arg(exists=True),
        help="Refuse commits not signed by a key of this SSH allowed-signers file.",
    ),
    opt(
        "--verify-gpg-keyring",
        metavar="PATH",
        type=path_arg(exists=True),
        help="Refuse commits not signed by a key of this OpenPGP keyring or GnuPG home.",
    ),
    opt(
        "--verify-since",
        metavar="COMMIT",
        help="With --verify-*: a trusted commit; commits it reaches are not checked.",
    ),
)


def _policy(allowed_signers: Path | None, gpg_keyring: Path | None, since: str | None) -> VerifyPolicy | None:
    if allowed_signers is None and gpg_keyring is None:
        if since is not None:
            raise UsageError("--verify-since needs --verify-allowed-signers or --verify-gpg-keyring")
        return None
    from gitopsd.source.verify import VerifyPolicy  # it imports pygit2: not for a plan told without Git

    try:
        return VerifyPolicy(allowed_signers=allowed_signers, gpg_keyring=gpg_keyring, since=since)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _reconciler(
    ctx: Context, repo: str | None, branch: str | None, verify: VerifyPolicy | None = None, *, timeout: float
) -> Reconciler:
    """The reconciler of this state directory; a pass waits at most `timeout` seconds for another process's."""
    import time

    from gitopsd.errors import PermanentError
    from gitopsd.reconcile.reconciler import Reconciler
    from gitopsd.reconcile.state import StateStore

    directory = state_dir(ctx)
    if repo is None:
        known = None
        if (directory / "state.db").exists():
            with StateStore(directory / "state.db") as store:
                known = store.source()
        if known is None:
            raise UsageError(f"no repository is tracked in {directory} yet: give --repo URL|PATH")
        repo, branch = known.url, branch or known.branch
    try:
        verify = verify or verify_policy(ctx)
        return Reconciler(
            state_dir=directory,
            url=repo,
            branch=branch,
            operator=operator(ctx),
            verify=verify,
            limits=output_limits(ctx),
            setup=settled_setup(ctx),
            on_busy=lambda holder: echo(f"waiting for {holder}, which is in a pass of {directory}", err=True),
            busy_until=time.monotonic() + timeout,
        )
    except PermanentError as exc:
        fail(str(exc))
        raise


@command(
    "plan",
    opt("--repo", metavar="TEXT", help="Git URL or local path of the GitOps repository (default: the one tracked)."),
    opt(
        "--branch",
        metavar="REF",
        help="The change to plan: a branch, a remote-tracking branch (origin/NAME), a tag or a commit id of a local "
        "--repo; a branch or commit id of a remote one (default: the tracked branch, else HEAD).",
    ),
    opt(
        "--base",
        metavar="REF",
        help="Compare with this commit (same forms as --branch) instead of the state directory's applied commit.",
    ),
    opt(
        "--format",
        dest="fmt",
        choices=["text", "markdown", "json"],
        default="text",
        show_default=True,
        help="text for a terminal, markdown for a pull-request comment, json (schema gitopsd.plan/v1).",
    ),
    *VERIFY_OPTIONS,
)
def plan(
    ctx: Context,
    repo: str | None,
    branch: str | None,
    base: str | None,
    fmt: str,
    verify_allowed_signers: Path | None,
    verify_gpg_keyring: Path | None,
    verify_since: str | None,
) -> None:
    """Show what a change would train, why, and at what cost, without doing it; never writes the state directory.

    Per model: trains or not and why, alias moves, removed and suspended models, refusals (policy, caps, backend),
    GPUs and GPU-hours bounded by timeouts. Exit codes: 0 fine; 1 the head commit is invalid, cannot be read, or
    anything is refused (so CI can block the merge); 2 usage."""
    from gitopsd.cli.plan import plan_command

    policy = _policy(verify_allowed_signers, verify_gpg_keyring, verify_since)
    verified = any(v is not None for v in (verify_allowed_signers, verify_gpg_keyring, verify_since))
    plan_command(ctx, repo=repo, branch=branch, base=base, fmt=fmt, policy=policy, verified=verified,
                 explain=_explain)  # fmt: skip


def _explain(action: Action, desired: Any) -> str:
    from gitopsd.reconcile import planner as p

    if isinstance(action, p.Submit):
        model = desired.models[action.model] if desired else None
        res = model.train.resources if model else None
        limit = f", up to {model.train.timeout_s / 3600:.2g} h" if model and model.train.timeout_s else ""
        cost = f", {res.gpus} GPU(s), {res.cpus} CPU(s){limit}" if res else ""
        where = f" on {model.train.backend}{cost}" if model else ""
        return f"+ train {action.model} (attempt {action.attempt}){where}: no version has run key {action.run_key[:12]}"
    if isinstance(action, p.Cancel):
        return f"- stop run {action.run_id} of {action.model}: {action.message}"
    if isinstance(action, p.Collect):
        return f"~ validate and register run {action.run_id} of {action.model}"
    if isinstance(action, p.Fail):
        return f"! mark run {action.run_id} of {action.model} failed: {action.message}"
    if isinstance(action, p.Adopt):
        return f"~ adopt job {action.job_id} of run {action.run_id} ({action.model})"
    if isinstance(action, p.Resubmit):
        return f"+ resubmit run {action.run_id} of {action.model}: its job never reached the backend"
    if isinstance(action, p.SetPhase):
        return f"~ run {action.run_id} of {action.model} is now {action.phase}"
    if isinstance(action, p.Wait):
        from gitopsd.units import format_time

        when = format_time(action.retry_at)
        return f"= wait: attempt {action.failed} of {action.model} failed, retrying at {when}"
    return repr(action)


@command(
    "reconcile",
    opt("--repo", metavar="TEXT", help="Git URL or local path of the GitOps repository (default: the one tracked)."),
    opt("--branch", metavar="TEXT", help="Branch to follow (default: the remote's default branch)."),
    opt(
        "--once", dest="mode", action="store_const", const="once", default="once", help="One pass, then exit (default)."
    ),
    opt("--wait", dest="mode", action="store_const", const="wait", help="Pass until every run has finished."),
    opt(
        "--timeout",
        type=float,
        default=3600,
        show_default=True,
        help="Seconds to wait at most: for the runs to finish (--wait), and for another process's pass of this "
        "state directory to end.",
    ),
    *VERIFY_OPTIONS,
)
def reconcile(
    ctx: Context,
    repo: str | None,
    branch: str | None,
    mode: str,
    timeout: float,
    verify_allowed_signers: Path | None,
    verify_gpg_keyring: Path | None,
    verify_since: str | None,
) -> None:
    """Fetch the repository and move actual state towards what it declares. One pass at a time per state
    directory: while the daemon (or another reconcile) is in one, this waits for it (at most --timeout)."""
    from gitopsd.cli.common import configuration_path
    from gitopsd.reconcile.quickpass import quick_reconcile

    config = configuration_path(ctx)
    verified = any(v is not None for v in (verify_allowed_signers, verify_gpg_keyring, verify_since))
    if commit := quick_reconcile(state_dir(ctx), repo, branch, config=config, verified=verified):
        echo(f"commit {commit[:12]}: 0 action(s), 0 run(s) in flight")  # settled: what the full pass says
        return
    policy = _policy(verify_allowed_signers, verify_gpg_keyring, verify_since)
    from gitopsd.cli.common import refuse_beside_a_lease, refuse_without_the_daemons_configuration
    from gitopsd.errors import PermanentError
    from gitopsd.reconcile.launch import check_runs_dirs

    refuse_beside_a_lease(ctx, "reconcile")
    refuse_without_the_daemons_configuration(ctx, "reconcile")
    try:
        check_runs_dirs(operator(ctx))
    except PermanentError as exc:
        fail(str(exc))
    rec = _reconciler(ctx, repo, branch, policy, timeout=timeout)
    stalled: list[str] = []
    try:
        result = rec.reconcile_until_settled(timeout_s=timeout) if mode == "wait" else rec.reconcile("cli")
        if mode == "wait" and not result.error and not result.active:
            stalled = _stalled(rec)
    finally:
        rec.close()
    if result.error:
        from gitopsd.errors import printable_lines
        from gitopsd.source.redact import redact_text

        echo(printable_lines(redact_text(result.error)), err=True)  # it may quote a remote's words
    echo(f"commit {(result.commit or 'none')[:12]}: {len(result.actions)} action(s), {result.active} run(s) in flight")
    for line in stalled:
        echo(line, err=True)
    if result.error or (mode == "wait" and result.active) or stalled:
        raise SystemExit(1)


def _stalled(rec: Reconciler) -> list[str]:
    """What `reconcile --wait` ends with when a model is stalled (a training failed past its retries, a policy
    refused it...): a line per model, and a last one saying so; nothing when none is. Waiting longer cannot mend
    a stalled model, and a CI job that waited must not pass for one that trained."""
    from gitopsd.errors import printable
    from gitopsd.model import ConditionType

    found = sorted((name, c) for name, c in rec.state.conditions().items() if c.type is ConditionType.STALLED)
    lines = [printable(f"  {name}: {c.reason}: {c.message}") for name, c in found[:20]]
    if len(found) > 20:
        lines.append(f"  ... and {len(found) - 20} more (gitopsd status)")
    return [f"{len(found)} model(s) stalled, which waiting cannot mend:", *lines] if found else []


@command(
    "status",
    arg("model", optional=True),
    opt("--json", dest="as_json", flag=True, help="Machine-readable output."),
    opt("--wide", flag=True, help="Do not shorten messages."),
    config_opt(
        "Show every repository of this daemon configuration (read-only, while it runs).",
    ),
    logs=False,  # reading state.db logs nothing; --config sets logging up before it loads the configuration
)
def status(ctx: Context, model: str | None, as_json: bool, wide: bool, config_path: Path | None) -> None:
    """Per model: what Git wants, what is, and why they differ.

    Exit codes: 0 status shown; 1 an error (a state.db that cannot be read, an invalid --config, no such
    model); 3 no status yet (no state.db: nothing reconciled this state directory, or its daemon has not
    finished a pass; the message says which)."""
    from gitopsd.reconcile.statusview import render

    if config_path is None:
        dirs = {"": state_dir(ctx)}
    else:
        from gitopsd.daemon.config import load_config
        from gitopsd.errors import GitopsdError

        setup_logging(ctx)
        try:
            config = load_config(config_path)
        except GitopsdError as exc:
            fail(str(exc))
            raise
        dirs = {r.name: config.state_dir_of(r) for r in config.repositories}
    docs = {name: _read_status(directory, model) for name, directory in dirs.items()}
    missing = {
        name: _no_status_yet(dirs[name])
        for name, doc in docs.items()
        if doc["repository"] is None and not doc.get("lease")  # a standby that never acted: its lease says why
    }
    if model and not missing and not any(doc["models"] for doc in docs.values()):
        fail(f"no model {model!r} in the applied commit")
    if as_json:
        # Indented for a person; compact (and several times faster on 10,000 models) for a pipe.
        import json

        out: Any = next(iter(docs.values())) if len(docs) == 1 else {"repositories": docs}
        echo(json.dumps(out, indent=2 if sys.stdout.isatty() else None))
        for name, why in missing.items():
            echo(f"{name + ': ' if name else ''}{why}", err=True)
    else:
        for name, doc in docs.items():
            if name:
                echo(f"== {name} ==")
            echo(missing[name] if name in missing else render(doc, wide=wide))
    if missing:
        raise SystemExit(3)


def _unreadable(db: Path) -> bool:
    """Whether `db` exists and SQLite cannot read it."""
    import sqlite3

    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        return True
    return False


def _read_status(directory: Path, model: str | None) -> dict[str, Any]:
    """The status document of one state directory; a state.db that cannot be read is one error line."""
    from gitopsd.reconcile.statusview import read_status

    if not (directory / "state.db").exists():  # nothing to read, nor to fail on: sqlite3 is not even loaded
        return read_status(directory, model)
    import sqlite3

    try:
        return read_status(directory, model)
    except sqlite3.Error as exc:
        bad = _unreadable(directory / "registry.db")
        if bad:
            from gitopsd.registry.versions import damaged

            fail(damaged(directory / "registry.db", exc))
        fail(f"cannot read {directory / 'state.db'}: {exc} (the file is damaged or not a gitopsd state database)")


def _no_status_yet(directory: Path) -> str:
    """Why `directory` has no state.db, as truthfully as the daemon lock can tell."""
    from gitopsd.daemon.instance import LOCK_NAME, serving_daemon

    parent = serving_daemon(directory.parent)
    if parent is not None:
        who = f"the daemon (pid {parent})" if parent else "the daemon"
        return (f"{who} serving {directory.parent} has no state for {directory.name} yet: it has not finished a "
                f"pass of it (or it is not one of its repositories); its log says what it is doing")  # fmt: skip
    if (directory / LOCK_NAME).exists():
        own = serving_daemon(directory)
        state = "running" if own is not None else "not running"
        names = sorted(p.name for p in directory.iterdir() if (p / "state.db").is_file())
        return (f"{directory} is the state_dir of a gitopsd daemon ({state}); each repository has its own state "
                f"directory in it ({', '.join(names) or 'none yet'}): use `gitopsd status --config FILE`, or "
                f"--state-dir {directory}/NAME")  # fmt: skip
    return f"nothing reconciled yet in {directory} (run `gitopsd reconcile --repo URL|PATH`, or `gitopsd run`)"


@command(
    "logs",
    arg("model"),
    opt("--run", dest="run_id", metavar="TEXT", help="A specific run (default: the model's latest)."),
)
def logs(ctx: Context, model: str, run_id: str | None) -> None:
    """Print the output of MODEL's latest run."""
    import os
    import sqlite3

    from gitopsd.cli.jsonstream import stdout, write_lines
    from gitopsd.source.redact import redact_text
    from gitopsd.ui.runfiles import log_lines, log_names, open_file, run_dir_of

    db = state_dir(ctx) / "state.db"
    if not db.exists():
        fail("nothing reconciled yet")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    where, args = ("id = ? AND model = ?", (run_id, model)) if run_id else ("model = ?", (model,))
    row = conn.execute(f"SELECT id, run_dir FROM runs WHERE {where} ORDER BY rowid DESC LIMIT 1", args).fetchone()
    conn.close()
    if row is None:
        fail(f"no run of {model!r}" + (f" with id {run_id}" if run_id else ""))
    # The run directory is the training's to write: its logs are opened as the dashboard opens them (no link
    # followed, nothing that blocks, only regular files), streamed, and credentials in URLs redacted.
    run_dir = run_dir_of(state_dir(ctx), row[0], row[1])
    names = log_names(run_dir) if run_dir is not None else []
    if run_dir is None or not names:
        fail(f"run {row[0]} has no logs yet")
    for name in names:
        opened = open_file(run_dir, f"logs/{name}")
        if opened is None:
            continue
        fd, _ = opened
        try:
            echo(f"==> {run_dir / 'logs' / name} <==")
            write_lines(map(redact_text, log_lines(fd)), stdout())
        finally:
            os.close(fd)


def main(argv: list[str] | None = None) -> None:
    """The console script: no Python traceback reaches a user unless they ask for it with --verbose."""
    args = sys.argv[1:] if argv is None else argv
    try:
        _run(args)
    except (KeyboardInterrupt, EOFError):
        echo("\nAborted!", err=True)
        raise SystemExit(1) from None
    except BrokenPipeError:
        _quiet_stdout()  # the reader went away (`| head`): end quietly, as a failure
        raise SystemExit(1) from None
    except Exception as exc:
        from gitopsd.errors import GitopsdError

        verbose = "-v" in args or "--verbose" in args
        if verbose:
            import traceback

            traceback.print_exc()
        # a file the command cannot use (missing, not allowed, a read-only file system) is the host's, not a bug
        host = isinstance(exc, OSError) and exc.filename is not None and bool(exc.strerror)
        if isinstance(exc, GitopsdError):
            what = str(exc)
        elif isinstance(exc, OSError) and host:
            what = f"{exc.filename}: {exc.strerror}" + (f" ({exc.filename2})" if exc.filename2 else "")
        else:
            what = f"{type(exc).__name__}: {exc}"
        echo(f"error: {what}", err=True)
        if not isinstance(exc, GitopsdError) and not host:
            later = "please report it with the traceback above" if verbose else "run with --verbose for the traceback"
            echo(f"(an unexpected error; {later})", err=True)
        raise SystemExit(1) from None


def _run(args: list[str]) -> None:
    """Parse `args` and run the command they name; a usage error exits 2 with the command's usage."""
    from gitopsd.cli.args import build_parser, chosen, options_of, subparser

    parser = build_parser(TOP_OPTIONS, only=chosen(args, TOP_OPTIONS))
    namespace, extras = parser.parse_known_args(args)
    cmd = getattr(namespace, "_command", None)
    if extras:  # said by the command's own parser, so that its usage is the one shown
        where = (
            cmd.path if cmd is not None else " ".join(filter(None, [namespace._name, getattr(namespace, "_sub", None)]))
        )
        top = [flag for flag in ("--state-dir", "--config", "-v", "--verbose") if flag in extras]
        verb = "goes" if len(top) == 1 else "go"
        hint = f" ({', '.join(top)} {verb} before the command: gitopsd {top[0]} ... {where})" if top else ""
        subparser(parser, where).error(f"unrecognized arguments: {' '.join(extras)}{hint}")
    if cmd is None:  # `gitopsd` or `gitopsd GROUP` alone: the help, as a usage error
        shown = subparser(parser, namespace._name) if namespace._name else parser
        shown.print_help(sys.stderr)
        raise SystemExit(2)
    try:
        cmd.handler(_context(namespace, logs=cmd.logs), **options_of(cmd, namespace))
    except UsageError as exc:
        subparser(parser, cmd.path).error(str(exc))


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush meets no closed pipe either."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
