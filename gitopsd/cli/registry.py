"""`gitopsd registry`, `lineage`, `history` and `promote`: reading and moving the registry's versions."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from gitopsd.cli.args import Context, UsageError, arg, at_least_zero, command, group, opt, path_arg
from gitopsd.cli.common import fail, open_registry, operator, state_dir
from gitopsd.cli.console import echo

REGISTRY = group("registry", "Registered versions: list, show, verify, rebuild.")


@command(
    "list",
    arg("model", optional=True),
    opt("--json", dest="as_json", flag=True, help="Machine-readable output (indented on a terminal)."),
    group=REGISTRY,
)
def registry_list(ctx: Context, model: str | None, as_json: bool) -> None:
    """List versions (of MODEL, or all), each as it is read."""
    from gitopsd.cli.jsonstream import indent_for, stdout, write_array, write_lines
    from gitopsd.registry.listing import summaries, version_texts

    out = stdout()
    with open_registry(ctx) as reg:
        if as_json:
            indent = indent_for(out)
            write_array(version_texts(reg, model, indent=indent), out, indent=indent)
            return
        write_lines((_version_line(v) for v in summaries(reg, model)), out)


def _version_line(v: Any) -> str:
    from gitopsd.errors import printable

    shown = ", ".join(f"{k}={val:.4g}" for k, val in sorted(v.metrics.items()))  # names a training wrote
    return f"{v.label:<24} sha256:{v.sha256[:12]}  {v.size:>10} B  commit {v.commit[:12]}  {printable(shown)}"


def _get_version(ctx: Context, label: str) -> tuple[Any, dict[str, str] | None]:
    """The version LABEL names and the packages it was trained with (None when its environment is unknown)."""
    from gitopsd.registry.environments import packages_of
    from gitopsd.registry.versions import parse_label

    try:
        name, number = parse_label(label)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    with open_registry(ctx) as reg:
        version = reg.get(name, number)
        if version is None:
            fail(f"no version {label}")
        packages = packages_of(version.lineage, reg.conn)
    return version, packages


@command("show", arg("label"), group=REGISTRY)
def registry_show(ctx: Context, label: str) -> None:
    """Show one version (NAME@N) as JSON."""
    import json

    from gitopsd.registry.listing import version_doc

    version, packages = _get_version(ctx, label)
    doc = version_doc(version)
    if "environment" in version.lineage:  # named by digest: shown with its packages, as inline ones were
        doc["lineage"]["packages"] = packages
    echo(json.dumps(doc, indent=2))


def _artifact_store(ctx: Context, uri: str | None, endpoint_url: str | None) -> Any:
    """The store named on the command line, else the one the operator's configuration gives this state dir."""
    from gitopsd.registry.stores import open_store

    config = operator(ctx).registry
    if uri is None:
        uri, endpoint_url = config.artifacts, endpoint_url or config.endpoint_url
    lock_days = config.object_lock_days if uri == config.artifacts else None
    return open_store(uri, state_dir(ctx) / "artifacts", endpoint_url=endpoint_url, object_lock_days=lock_days)


STORE_OPTIONS = (
    opt(
        "--store",
        dest="store_uri",
        metavar="TEXT",
        help="Artifact store URI (default: the one the operator's configuration names).",
    ),
    opt("--endpoint-url", metavar="TEXT", help="Endpoint of an S3-compatible store."),
)


@command(
    "verify",
    *STORE_OPTIONS,
    opt(
        "--stale-after",
        dest="stale_after_s",
        metavar="FLOAT",
        type=at_least_zero,
        default=3600.0,
        show_default=True,
        help="Seconds after which an unfinished upload counts as abandoned.",
    ),
    opt("--abort-stale-uploads", flag=True, help="Abort abandoned unfinished uploads instead of reporting them."),
    group=REGISTRY,
)
def registry_verify(
    ctx: Context, store_uri: str | None, endpoint_url: str | None, stale_after_s: float, abort_stale_uploads: bool
) -> None:
    """Re-hash every version's artifact and check its record, each in the store it was stored in (all in --store
    if given); check every store is reachable; exit 1 if anything is missing, altered or unreachable."""
    from gitopsd.errors import GitopsdError
    from gitopsd.registry.verify import verify

    try:
        store = _artifact_store(ctx, store_uri, endpoint_url)
        with open_registry(ctx) as reg:
            versions = reg.list()
            journals = _journal_problems(reg, store)
        report = verify(
            versions,
            store,
            lambda uri: _artifact_store(ctx, uri, endpoint_url or operator(ctx).registry.endpoint_url),
            own_store=store_uri is None,
            stale_after_s=stale_after_s,
            abort_stale=abort_stale_uploads,
        )
    except GitopsdError as exc:
        fail(str(exc))
    report.problems.extend(journals)
    for line in report.notes:
        echo(line)
    for line in report.problems:
        echo(line, err=True)
    where = ", ".join(report.stores)
    if report.problems:
        fail(f"{len(report.problems)} problem(s) in {report.versions} version(s) in {where}")
    echo(f"{report.versions} version(s) verified: artifacts and records intact in {where}")


def _journal_problems(reg: Any, store: Any) -> list[str]:
    """The alias moves in the registry that the store's journals lack (none when it cannot be asked)."""
    from gitopsd.errors import GitopsdError
    from gitopsd.registry.aliases import AliasBook
    from gitopsd.registry.recovery import journal_problems

    if reg.conn is None:
        return []
    book = AliasBook(reg.conn)
    models = sorted({record.model for record in book.history()})
    try:
        return journal_problems(store, book, models)
    except GitopsdError:
        return []  # an unreachable store is verify's own problem line


@command("rebuild", *STORE_OPTIONS, group=REGISTRY)
def registry_rebuild(ctx: Context, store_uri: str | None, endpoint_url: str | None) -> None:
    """Recreate registry.db from the artifact store's records alone (disaster recovery)."""
    from gitopsd.errors import GitopsdError
    from gitopsd.registry.recovery import rebuild

    store = _artifact_store(ctx, store_uri, endpoint_url)
    try:
        versions, moves = rebuild(store, state_dir(ctx) / "registry.db")
    except GitopsdError as exc:
        fail(str(exc))
        raise
    echo(f"rebuilt {state_dir(ctx) / 'registry.db'} from {store.uri}: {versions} version(s), {moves} alias move(s)")


@command("lineage", arg("label"))
def lineage(ctx: Context, label: str) -> None:
    """Where NAME@N came from: commit, code tree, data, job, host, metrics."""
    from gitopsd.errors import printable
    from gitopsd.source.redact import redact_url

    v, packages = _get_version(ctx, label)
    lin = v.lineage
    job = lin.get("job", {})
    rows = [
        ("version", v.label),
        ("artifact", f"sha256:{v.artifact.sha256} ({v.artifact.size} bytes)"),
        ("repository", redact_url(str(lin.get("repo")))),  # versions made before redaction
        ("commit", lin.get("commit")),
        ("subject", lin.get("commit_info", {}).get("subject")),
        ("spec", lin.get("spec_path")),
        ("run key", lin.get("run_key")),
        ("code tree", f"{lin.get('code_tree')} ({lin.get('workdir')})"),
        ("command", lin.get("command")),
        ("backend", f"{lin.get('backend', {}).get('name')} (type {lin.get('backend', {}).get('type')})"),
        ("run", f"{lin.get('run_id')} attempt {lin.get('attempt')}"),
        ("job", lin.get("job_id")),
        ("host", job.get("host")),
        ("exit code", lin.get("exit_code")),
        ("python", lin.get("python")),
    ]
    if "environment" in lin:
        known = "unknown to this registry"
        if packages is not None:
            known = f"{len(packages)} packages, listed by `gitopsd registry show {v.label}`"
        rows.append(("environment", f"{lin['environment']} ({known})"))
    if lin.get("base"):
        rows.append(("base", f"{lin['base']['label']} (from {lin['base']['ref']}, sha256:{lin['base']['sha256']})"))
        rows.append(("chain", " <- ".join(_base_chain(ctx, v))))
    for item in lin.get("data", []):
        rows.append(("data", f"{item['uri']} sha256:{item['sha256']}"))
    for gate in v.gates:
        rows.append(("gate", f"{gate['gate']}: {gate['value']} {'passed' if gate['passed'] else 'FAILED'}"))
    rows.append(("metrics", ", ".join(f"{k}={val:.4g}" for k, val in sorted(v.metrics.items()))))
    for key, value in rows:  # a pusher wrote the subject, a training's environment the host and packages
        echo(f"{key:<11} {printable(str(value))}")


@command(
    "promote",
    arg("label"),
    opt("--alias", metavar="TEXT", required=True, help="The alias to move, e.g. production."),
    opt(
        "--clone",
        metavar="DIRECTORY",
        type=path_arg(file_okay=False),
        default=".",
        show_default=True,
        help="A local clone of the GitOps repository to commit in.",
    ),
    opt("--force", flag=True, help="Commit even if this state directory has no such version."),
)
def promote(ctx: Context, label: str, alias: str, clone: Path, force: bool) -> None:
    """Point ALIAS at LABEL (NAME@N) by a commit in a local clone; review and push it yourself."""
    from gitopsd.errors import PermanentError, SpecError
    from gitopsd.registry.promote import promote as do_promote
    from gitopsd.registry.versions import parse_label

    try:
        name, number = parse_label(label)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if not force:
        with open_registry(ctx) as reg:
            if reg.get(name, number) is None:
                fail(f"{label} is not a registered version in {state_dir(ctx)} (use --force to commit anyway)")
    try:
        path, commit = do_promote(clone, name, number, alias)
    except (PermanentError, SpecError) as exc:
        fail(str(exc))
        raise
    echo(f"{path}: {alias} -> {label}, committed {commit[:12]} (not pushed)")


@command(
    "history",
    arg("model"),
    opt("--json", dest="as_json", flag=True, help="Machine-readable output (indented on a terminal)."),
)
def history(ctx: Context, model: str, as_json: bool) -> None:
    """MODEL's versions and alias moves, oldest first, with their commits, each as it is read."""
    import json

    from gitopsd.cli.jsonstream import indent_for, stdout, write_array, write_lines
    from gitopsd.registry.listing import history as entries_of

    out = stdout()
    with open_registry(ctx) as reg:
        entries = entries_of(reg, model)
        first = next(entries, None)
        if first is None:
            fail(f"no history for {model!r}")
        entries = itertools.chain((first,), entries)
        if as_json:
            indent = indent_for(out)
            write_array((json.dumps(e, indent=indent) for e in entries), out, indent=indent)
            return
        write_lines((_history_line(model, e) for e in entries), out)


def _history_line(model: str, e: dict[str, Any]) -> str:
    from gitopsd.errors import printable

    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
    if e["event"] == "registered":
        what = f"{model}@{e['version']} registered (sha256:{e['artifact'][:12]})"
    else:
        previous = f"{model}@{e['previous']}" if e["previous"] else "-"
        target = f"{model}@{e['version']}" if e["version"] else "nothing"
        what = f"{e['alias']} {e['event'].removeprefix('alias ')}: {previous} -> {target}"
    return f"{when}  {e['commit'][:12]}  {what}  ({printable(str(e['subject'] or ''))})"  # written by a pusher


def _base_chain(ctx: Context, version: Any) -> list[str]:
    """NAME@N, then the version it was fine-tuned from, and so on back to a model trained from scratch."""
    from gitopsd.registry.versions import parse_label

    chain = [version.label]
    with open_registry(ctx) as reg:
        while version is not None and version.lineage.get("base") and len(chain) < 100:
            label = version.lineage["base"]["label"]
            chain.append(label)
            version = reg.get(*parse_label(label))
    return chain
