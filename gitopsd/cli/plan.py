"""The shell of `gitopsd plan`: resolve the base and head commits, load both desired states, run a dry-run pass on a
scratch copy of the state directory, and hand everything to the pure change report (`reconcile/changeplan.py`).

A plan never writes to the state directory: its databases are copied into a temporary directory (SQLite's backup,
from read-only connections) and the reconciler works there; the commits are read through a scratch bare
repository whose Git alternates are the state directory's mirror and, for a local repository, the clone's own
object store, so nothing is copied and a REF may be anything the clone knows (`HEAD`, `origin/main`, a tag, a
commit id). A remote repository is fetched into the scratch repository (its branches, or a commit id they reach).
On a fresh, empty state directory (a CI runner) nothing is known of versions or runs, and each model is judged
by its own change. The state directory's parse cache (`reconcile/speccache.py`) is read, never written: a plan
parses only the spec files whose blobs the daemon or a `reconcile` has not seen, and keeps no cache of its own
anywhere (a fresh CI runner has none to reuse, and a plan must leave no file behind). A plan of the applied
commit against itself, when the settled-pass record (`reconcile/settled.py`) shows that a pass would do nothing,
loads nothing at all: each line comes from the row the settling pass wrote of its model (`_settled_plan`); on a
terminal and as markdown only the rows that may say more than "unchanged" are read, the others counted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gitopsd.cli.args import Context, UsageError
from gitopsd.cli.common import (
    fail,
    operator,
    output_limits,
    refuse_without_the_daemons_configuration,
    state_dir,
    verify_policy,
)
from gitopsd.cli.console import echo
from gitopsd.cli.jsonstream import indent_for, stdout
from gitopsd.errors import GitopsdError, printable_lines
from gitopsd.reconcile.gcpause import collector_paused
from gitopsd.source.redact import redact_text

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    import pygit2

    from gitopsd.reconcile.changeplan import ChangePlan, Declared, Facts
    from gitopsd.reconcile.desired import DesiredState
    from gitopsd.reconcile.planner import Action
    from gitopsd.reconcile.reconciler import Reconciler
    from gitopsd.reconcile.state import PlanLine, SourceRow
    from gitopsd.source.verify import VerifyPolicy

FORMATS = ("text", "markdown", "json")


@dataclass(frozen=True, kw_only=True)
class _Planned:
    plan: ChangePlan
    passed: bool = True  # whether a dry-run pass said what it would do (not when the head could not be loaded)
    commit: str | None = None  # the pass's commit, its actions, and the models it may submit nothing for
    actions: Sequence[Action] = ()
    blocked: Mapping[str, str] = field(default_factory=dict)
    head: DesiredState | None = None


def plan_command(
    ctx: Context,
    *,
    repo: str | None,
    branch: str | None,
    base: str | None,
    fmt: str,
    policy: VerifyPolicy | None,
    verified: bool,
    explain: Callable[[Action, DesiredState | None], str],
) -> None:
    """Print the plan in `fmt` and exit with its code (0 fine; 1 invalid or refused). `verified`: a signature
    policy was given on the command line (`policy`, once parsed)."""
    directory = state_dir(ctx)
    # the first commit the plan loads whole: the base when one is given, else the head
    with _early_helper(directory, repo, base or branch or "HEAD"):
        refuse_without_the_daemons_configuration(ctx, "plan")
        known = _known_source(directory)
        given = repo
        if repo is None:
            if known is None:
                raise UsageError(f"no repository is tracked in {directory} yet: give --repo URL|PATH")
            repo = known.url
        # The cyclic collector is off for the whole plan (two commits' models, the dry run, or a settled plan's ten
        # thousand rows and entries; the report): a plan makes no reference cycles worth collecting and uploads
        # nothing, and the scans would be about a tenth of a cold plan and of a settled one.
        with collector_paused():
            outcome = None
            if base is None:  # JSON lists every model; the text and markdown faces only count the quiet ones
                outcome = _settled_plan(ctx, directory, known, given, branch, verified=verified, brief=fmt != "json")
            if outcome is None:
                import tempfile

                with tempfile.TemporaryDirectory(prefix="gitopsd-plan-") as scratch:
                    outcome = _plan(ctx, Path(scratch), directory, known, repo, branch, base, policy)
            code = _print(outcome, fmt, against_state=base is None, explain=explain)
            # Freed here, by reference counting: alive when the collector resumed, the plan's ten thousand entries
            # (and a full plan's two commits) would be scanned by its first collection, on the way out (3-9 ms).
            del outcome
        raise SystemExit(code)


def _early_helper(directory: Path, repo: str | None, ref: str) -> AbstractContextManager[None]:
    """On a state directory with no parse cache (a fresh CI runner), a helper that starts building the spec files
    of REF of a local repository now, before the plan imports its heavy modules (`spec.prebuild`); the load of
    that commit takes it over, and this process loads only the files the helper has not reached. Nothing where
    the state directory has a cache, the repository is remote, REF is not found, or the commit has too few spec
    files or too many: the load then goes as without it."""
    from gitopsd.reconcile.statekey import KEY_FILE

    if repo is None or (directory / KEY_FILE).exists():  # no key, no cache (`reconcile/speccache.py`)
        return nullcontext()
    from gitopsd.source.urls import local_path, normalise_url

    local = local_path(normalise_url(repo))
    if local is None:
        return nullcontext()
    import functools

    import pygit2

    from gitopsd.errors import GitopsdError
    from gitopsd.source.specfiles import spec_blobs
    from gitopsd.spec import prebuild
    from gitopsd.spec.bounds import SpecLimits, decode_spec, size_problems
    from gitopsd.spec.layout import REPO_SPEC

    limits = SpecLimits()
    try:
        lookup = pygit2.Repository(str(local), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
        commit = lookup[_resolve(lookup, ref, str(local), remote=False)]
        blobs = spec_blobs(lookup, commit.peel(pygit2.Tree), limits)
    except (pygit2.GitError, KeyError, ValueError, GitopsdError):
        return nullcontext()  # the plan says what is wrong when it gets there
    blobs.pop(REPO_SPEC, None)
    if not prebuild.worth_it(len(blobs)):
        return nullcontext()
    odb = lookup.odb

    @functools.cache
    def refused() -> set[str]:  # the loader's rule: a file over its bound is not read, nor any when all together are
        sizes = {path: odb.read_header(pygit2.Oid(hex=blob))[1] for path, blob in blobs.items()}
        over = {problem.file for problem in size_problems(sizes, limits)}
        return set(blobs) if over - sizes.keys() else over

    def read(rel: str) -> str:  # in the helper only, which reads nothing the loader would refuse by its size
        if rel in refused():
            raise ValueError(f"{rel}: over a bound")
        return decode_spec(odb.read(pygit2.Oid(hex=blobs[rel]))[1], rel)

    return prebuild.offer(prebuild.start(sorted(blobs), read), blobs)


def _print(
    outcome: _Planned, fmt: str, *, against_state: bool, explain: Callable[[Action, DesiredState | None], str]
) -> int:
    """Print the plan in `fmt`; its exit code."""
    from gitopsd.reconcile import planreport

    plan = outcome.plan
    if plan.error:  # each line escaped: it may quote a remote's or a spec file's words
        echo(printable_lines(redact_text(plan.error)), err=True)
    for problem in plan.problems:
        echo(str(problem), err=True)
    if fmt == "json":  # indented on a terminal, on one line when piped: as every --json of the command line
        echo(planreport.render_json(plan, indent=indent_for(stdout())))
    elif fmt == "markdown":
        echo(planreport.render_markdown(plan), nl=False)
    else:
        if outcome.passed and against_state:  # against this state directory: what a reconcile would do now
            echo(f"commit {(outcome.commit or 'none')[:12]}: {len(outcome.actions)} action(s)")
            for action in outcome.actions:
                echo("  " + planreport.term(explain(action, outcome.head)))
            for name, why in sorted(outcome.blocked.items()):
                echo(f"  ! {planreport.term(name)}: {planreport.term(why)}")
        echo(planreport.render_text(plan))
    return plan.exit_code


def _settled_plan(
    ctx: Context,
    directory: Path,
    known: SourceRow | None,
    repo: str | None,
    branch: str | None,
    *,
    verified: bool,
    brief: bool = False,
) -> _Planned | None:
    """The plan of the state directory's settled commit against itself, told from what the pass that settled it
    recorded (the settled-pass record, each model's row), without loading the commit; None when that record does
    not vouch for it. The databases are read in place, read-only, each in one snapshot: however long their
    history, nothing is copied. `brief`: the models whose lines are quiet are counted in SQLite, not read
    (`changeplan.Omitted`): a settled plan of ten thousand models reads only those it shows."""
    from gitopsd.cli.common import configuration_path
    from gitopsd.reconcile import quickpass

    if known is None or known.applied_commit is None:
        return None
    found = quickpass.settled_record(directory, configuration_path(ctx), verified)
    if found is None:
        return None
    record, setup = found
    from gitopsd.errors import GitopsdError
    from gitopsd.model import Reason
    from gitopsd.reconcile import changeplan
    from gitopsd.reconcile.changeplan import Omitted
    from gitopsd.reconcile.state import StateStore
    from gitopsd.registry.aliases import AliasBook, alias_targets
    from gitopsd.registry.sqlitedb import snapshot
    from gitopsd.registry.versions import Registry
    from gitopsd.source.urls import local_path

    head_label = branch or known.branch or "HEAD"
    try:
        state = StateStore(directory / "state.db", readonly=True)
    except (GitopsdError, OSError, sqlite3.Error):
        return None
    try:
        with Registry(directory / "registry.db", readonly=True) as registry, snapshot(state.conn, registry.conn):
            source = quickpass.settled_source(state, registry, directory, record, repo, branch, setup)
            path = local_path(known.url)
            if source is None or path is None or quickpass.local_commit(path, head_label) != source[0]:
                return None  # --branch names another commit than the one the settled pass applied
            aliases = AliasBook(registry.conn).current()
            omitted = Omitted()
            if brief:  # the models shown only: however long the others' history
                rows, *counts = state.settled_quiet({model for model, _ in aliases})
                omitted = Omitted(*counts)
            else:
                rows = state.plan_lines()
            declared = list(_declared(rows))
            versions = registry.wanted_numbers({row.name: row.wanted_key for row in rows})
            numbers = registry.alias_numbers(alias_targets(((d.name, d.aliases) for d in declared), aliases))
    except (GitopsdError, OSError, ValueError, sqlite3.Error):  # the full plan reports whatever it meets
        return None
    finally:
        state.close()
    if any(not row.wanted_key for row in rows):  # a row no pass of this gitopsd has written
        return None
    commit = source[0]
    blocked = {row.name: row.blocked for row in rows if row.blocked}
    dry = changeplan.DryRun(
        blocked=blocked, unavailable=dict(record.unavailable), run_keys={row.name: row.wanted_key for row in rows},
        blocked_reasons={row.name: Reason(row.blocked_reason) for row in rows if row.blocked},
    )  # fmt: skip
    facts = changeplan.Facts(known=True, versions=versions, aliases=aliases, numbers=numbers)
    plan = changeplan.settled(commit=commit, models=declared, facts=facts, dry_run=dry,
                              base_label="the applied commit", head_label=head_label, omitted=omitted)  # fmt: skip
    return _Planned(plan=plan, commit=commit, blocked=blocked)


def _declared(rows: Iterable[PlanLine]) -> Iterator[Declared]:
    """What a pass recorded of each model, as its line of a plan needs it (positional: ten thousand of them)."""
    import json

    from gitopsd.reconcile.changeplan import Declared

    for row in rows:
        aliases = json.loads(row.aliases) if row.aliases != "{}" else {}
        yield Declared(row.name, row.spec_path, bool(row.suspend), row.wanted_key, row.backend, row.gpus,
                       row.gpu_hours, row.timeout_s, row.retries, aliases)  # fmt: skip


def _known_source(directory: Path) -> SourceRow | None:
    """What the state directory tracks, read without writing (None for a fresh one)."""
    from gitopsd.reconcile.state import SourceRow
    from gitopsd.registry.sqlitedb import created

    db = directory / "state.db"
    if not db.exists():
        return None
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
            if not created(conn):
                return None  # a state.db another process is creating: nothing is tracked in it yet
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM sources WHERE id = 1").fetchone()
    except sqlite3.Error as exc:
        fail(f"cannot read {db}: {exc} (the file is damaged or not a gitopsd state database)")
    if row is None:
        return None
    fields = set(SourceRow.__dataclass_fields__)
    return SourceRow(**{k: row[k] for k in fields & set(row.keys())})


def _copy_databases(directory: Path, scratch: Path) -> None:
    """state.db and registry.db, copied consistently (a daemon may be writing them) into the scratch directory."""
    for name in ("state.db", "registry.db"):
        source = directory / name
        if not source.exists():
            continue
        try:
            with (
                closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)) as src,
                closing(sqlite3.connect(scratch / name)) as dst,
            ):
                src.backup(dst)
        except sqlite3.Error as exc:
            fail(f"cannot read {source}: {exc} (the file is damaged or not a gitopsd database)")


def _objects_of(path: Path) -> Path:
    """The object store of the local repository at `path` (bare, a clone, or a worktree of one)."""
    import pygit2

    from gitopsd.errors import SourceUnavailable

    try:
        found = pygit2.Repository(str(path), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
    except (pygit2.GitError, KeyError, ValueError) as exc:
        raise SourceUnavailable(f"repository {path} does not exist (or is not a git repository)") from exc
    gitdir = Path(found.path)
    common = gitdir / "commondir"
    if common.is_file():
        gitdir = (gitdir / common.read_text().strip()).resolve()
    return gitdir / "objects"


def _resolve(repo: pygit2.Repository, ref: str, where: str, *, remote: bool) -> str:
    """The commit id REF names in `repo`: a branch, a remote-tracking branch, a tag, a commit id."""
    import pygit2

    from gitopsd.errors import SourceUnavailable

    tries = [ref]
    if remote and ref.startswith("origin/"):  # the mirror's branches are the remote's own
        tries.append(ref.removeprefix("origin/"))
    for name in tries:
        try:
            obj = repo.revparse_single(name)
            return str(obj.peel(pygit2.Commit).id)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
            continue
    if not any(name.startswith(("refs/heads/", "refs/remotes/", "refs/tags/")) for name in repo.references):
        raise SourceUnavailable(f"{where} has no commits yet: commit and push a first one")
    kinds = "a branch or a commit id" if remote else "a branch, a remote-tracking branch, a tag or a commit id"
    raise SourceUnavailable(f"{ref!r} is not {kinds} of {where}")


def _plan(
    ctx: Context,
    scratch: Path,
    directory: Path,
    known: SourceRow | None,
    url: str,
    branch: str | None,
    base_ref: str | None,
    policy: VerifyPolicy | None,
) -> _Planned:
    from gitopsd.errors import PermanentError, SpecError
    from gitopsd.reconcile import changeplan
    from gitopsd.reconcile.reconciler import Reconciler
    from gitopsd.reconcile.speccache import SpecCache

    _copy_databases(directory, scratch)
    try:
        rec = Reconciler(state_dir=scratch, url=url, branch=branch, operator=operator(ctx),
                         verify=policy or verify_policy(ctx), limits=output_limits(ctx),
                         spec_cache=SpecCache.open(directory, writable=False))  # fmt: skip
    except PermanentError as exc:
        fail(str(exc).replace(str(scratch), str(directory)))
    head_label = branch or (known.branch if known is not None and known.branch else "HEAD")
    applied = known.applied_commit if known is not None else None
    base_label = base_ref or ("the applied commit" if applied else "nothing applied")
    head: str | None = None
    base: str | None = None
    try:
        try:
            head, base = _commits(rec, directory, url, head_label, base_ref, applied)
            base_state, notes = _base_state(rec, base)  # first: the head then loads incrementally from it
            head_state = rec.loader.load(head)
        except SpecError as exc:
            invalid = changeplan.invalid(base_commit=base, head_commit=head, base_label=base_label,
                                         head_label=head_label, problems=exc.problems)  # fmt: skip
            return _Planned(plan=invalid, passed=False)
        except GitopsdError as exc:
            what = f"against --base {base_ref}" if isinstance(exc, _BaseUnknown) else head_label
            invalid = changeplan.invalid(base_commit=base, head_commit=head, base_label=base_label,
                                         head_label=head_label, error=f"cannot plan {what}: {exc}")  # fmt: skip
            return _Planned(plan=invalid, passed=False)
        result = rec.reconcile("plan", dry_run=True, at=head)
        if result.error:
            invalid = changeplan.invalid(base_commit=base, head_commit=head, base_label=base_label,
                                         head_label=head_label, error=result.error)  # fmt: skip
            return _Planned(plan=invalid, commit=result.commit, actions=result.actions, blocked=result.blocked)
        dry = changeplan.DryRun(
            actions=result.actions, blocked=result.blocked, unavailable=result.unavailable,
            blocked_reasons={name: want.blocked_reason for name, want in result.wants.items() if want.blocked},
            run_keys={name: want.run_key for name, want in result.wants.items()},
        )  # fmt: skip
        wanted = {name: dry.run_keys.get(name, model.run_key) for name, model in head_state.models.items()}
        states = [s for s in (base_state, head_state) if s is not None]
        facts = _facts(rec, states, wanted, known_state=applied is not None)
        built = changeplan.build(base=base_state, head=head_state, facts=facts, dry_run=dry, base_label=base_label,
                                 head_label=head_label, notes=notes)  # fmt: skip
        return _Planned(plan=built, commit=result.commit, actions=result.actions, blocked=result.blocked,
                        head=head_state)  # fmt: skip
    finally:
        rec.close()


class _BaseUnknown(GitopsdError):
    """--base names nothing the repository has."""


def _commits(
    rec: Reconciler, directory: Path, url: str, head_ref: str, base_ref: str | None, applied: str | None
) -> tuple[str, str | None]:
    """(head, base) commit ids, both readable through the scratch mirror: its alternates are the state
    directory's mirror and a local repository's own objects; a remote one is fetched into it."""
    import pygit2

    from gitopsd.source.mirror import local_path, normalise_url

    local = local_path(normalise_url(url))
    alternates = [directory / "source.git" / "objects"]
    if local is not None:
        alternates.insert(0, _objects_of(local))
    info = Path(rec.source.repo.path) / "objects" / "info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "alternates").write_text("".join(f"{p}\n" for p in alternates if p.is_dir()))
    if local is None:
        rec.source.fetch()
    lookup = pygit2.Repository(str(local), pygit2.enums.RepositoryOpenFlag.NO_SEARCH) if local else rec.source.repo
    where, remote = rec.source.shown, local is None
    head = _resolve(lookup, head_ref, where, remote=remote)
    try:
        base = _resolve(lookup, base_ref, where, remote=remote) if base_ref else applied
    except GitopsdError as exc:
        raise _BaseUnknown(str(exc)) from exc
    return head, base


def _base_state(rec: Reconciler, base: str | None) -> tuple[DesiredState | None, list[str]]:
    """The desired state at the base commit (None: nothing to compare with), and a note when it cannot be read.
    Loaded by the reconciler's own loader, so that loading the head re-parses only the spec files that differ."""
    from gitopsd.errors import GitopsdError, SpecError

    if base is None:
        return None, []
    try:
        return rec.loader.load(base), []
    except SpecError as exc:
        why = f"is invalid ({exc.total} problem(s))"
    except GitopsdError as exc:
        why = f"cannot be read ({exc})"
    return None, [f"base commit {base[:12]} {why}: every model of the head is shown as new"]


def _facts(rec: Reconciler, states: Sequence[DesiredState], wanted: Mapping[str, str], *, known_state: bool) -> Facts:
    """What the state directory knows of the models of `states` (the base and head): the versions of the run key
    each head model wants (`wanted`, the key `changeplan` judges it by), and what their aliases need."""
    from gitopsd.reconcile.changeplan import Facts, InFlight
    from gitopsd.registry.aliases import alias_targets

    runs = rec.state.active_runs()
    aliases = rec.aliases.current()
    declared = ((name, m.spec.spec.aliases) for state in states for name, m in state.models.items())
    return Facts(
        known=known_state,
        versions=rec.registry.wanted_numbers(wanted),
        aliases=aliases,
        in_flight=tuple(InFlight(model=r.model, run_id=r.id, run_key=r.run_key, phase=str(r.phase)) for r in runs),
        numbers=rec.registry.alias_numbers(alias_targets(declared, aliases)),
    )
