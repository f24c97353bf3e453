"""The `gitopsd` command line: a thin shell over the reconciler, the registry and the status view.

Each command imports only what it needs, so `gitopsd status` stays fast on a login node. Exit codes: 0 ok,
1 failure (including invalid specs and failed verification), 2 usage.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from gitopsd.planner import Action
    from gitopsd.reconciler import Reconciler

DEFAULT_STATE_DIR = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "gitopsd"


def _state_dir(ctx: click.Context) -> Path:
    path: Path = ctx.obj["state_dir"]
    return path


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    envvar="GITOPSD_STATE_DIR",
    default=DEFAULT_STATE_DIR,
    show_default="$XDG_STATE_HOME/gitopsd, else ~/.local/state/gitopsd",
    help="Where gitopsd keeps its databases, mirror, runs and artifacts [env: GITOPSD_STATE_DIR].",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every step.")
@click.version_option(package_name="gitopsd")
@click.pass_context
def cli(ctx: click.Context, state_dir: Path, verbose: bool) -> None:
    """gitopsd: declare models in Git; gitopsd trains them and registers immutable versions."""
    ctx.obj = {"state_dir": state_dir.expanduser().absolute()}
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
def init(directory: Path) -> None:
    """Create a demo GitOps repository in DIRECTORY, with one commit."""
    from gitopsd.scaffold import init_demo

    try:
        commit = init_demo(directory)
    except FileExistsError as exc:
        _fail(str(exc))
    click.echo(f"created {directory} at commit {commit[:12]}: one model (blobs), trained in about a second")
    click.echo(f"next: gitopsd reconcile --repo {directory} --wait && gitopsd status")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path), default=".")
def validate(path: Path) -> None:
    """Check the spec files of a working tree (default: the current directory); exit 1 on any problem."""
    from gitopsd.errors import SpecError
    from gitopsd.worktree import load_tree

    try:
        specs = load_tree(path)
    except SpecError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        _fail(f"{len(exc.problems)} problem(s) in {path}")
    names = ", ".join(sorted(m.name for m in specs.models.values())) or "none"
    click.echo(f"{path}: valid; {len(specs.models)} model(s): {names}")


@cli.command()
def schema() -> None:
    """Print the JSON Schema of spec files (for editors and CI)."""
    from gitopsd.spec import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


def _reconciler(ctx: click.Context, repo: str | None, branch: str | None) -> Reconciler:
    from gitopsd.errors import PermanentError
    from gitopsd.reconciler import Reconciler
    from gitopsd.state import StateStore

    state_dir = _state_dir(ctx)
    if repo is None:
        known = None
        if (state_dir / "state.db").exists():
            with StateStore(state_dir / "state.db") as store:
                known = store.source()
        if known is None:
            raise click.UsageError(f"no repository is tracked in {state_dir} yet: give --repo URL|PATH")
        repo, branch = known.url, branch or known.branch
    try:
        return Reconciler(state_dir=state_dir, url=repo, branch=branch)
    except PermanentError as exc:
        _fail(str(exc))
        raise


@cli.command()
@click.option("--repo", help="Git URL or local path of the GitOps repository (default: the one tracked).")
@click.option("--branch", help="Branch to follow (default: the remote's default branch).")
@click.pass_context
def plan(ctx: click.Context, repo: str | None, branch: str | None) -> None:
    """Show what a reconcile would do now, and why, without doing it."""
    rec = _reconciler(ctx, repo, branch)
    result = rec.reconcile("plan", dry_run=True)
    desired = rec.loader.last_good
    if result.error:
        click.echo(result.error, err=True)
    click.echo(f"commit {(result.commit or 'none')[:12]}: {len(result.actions)} action(s)")
    for action in result.actions:
        click.echo("  " + _explain(action, desired))
    for name, why in sorted(result.unavailable.items()):
        click.echo(f"  ! backend {name} unavailable: {why}")
    for name, why in sorted(result.blocked.items()):
        click.echo(f"  ! {name}: {why}")
    rec.close()
    if result.error and desired is None:
        raise SystemExit(1)


def _explain(action: Action, desired: Any) -> str:
    from gitopsd import planner as p

    if isinstance(action, p.Submit):
        model = desired.models[action.model] if desired else None
        res = model.train.resources if model else None
        cost = f", {res.gpus} GPU(s), {res.cpus} CPU(s)" if res else ""
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
    return repr(action)


@cli.command()
@click.option("--repo", help="Git URL or local path of the GitOps repository (default: the one tracked).")
@click.option("--branch", help="Branch to follow (default: the remote's default branch).")
@click.option("--once", "mode", flag_value="once", default=True, help="One pass, then exit (default).")
@click.option("--wait", "mode", flag_value="wait", help="Pass until every run has finished.")
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds --wait waits at most.")
@click.pass_context
def reconcile(ctx: click.Context, repo: str | None, branch: str | None, mode: str, timeout: float) -> None:
    """Fetch the repository and move actual state towards what it declares."""
    rec = _reconciler(ctx, repo, branch)
    try:
        result = rec.reconcile_until_settled(timeout_s=timeout) if mode == "wait" else rec.reconcile("cli")
    finally:
        rec.close()
    if result.error:
        click.echo(result.error, err=True)
    click.echo(
        f"commit {(result.commit or 'none')[:12]}: {len(result.actions)} action(s), {result.active} run(s) in flight"
    )
    if result.error or (mode == "wait" and result.active):
        raise SystemExit(1)


@cli.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--wide", is_flag=True, help="Do not shorten messages.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Show every repository of this daemon configuration (read-only, while it runs).",
)
@click.pass_context
def status(ctx: click.Context, model: str | None, as_json: bool, wide: bool, config_path: Path | None) -> None:
    """Per model: what Git wants, what is, and why they differ."""
    from gitopsd.statusview import read_status, render

    if config_path is None:
        docs = {"": read_status(_state_dir(ctx), model)}
    else:
        from gitopsd.config import load_config
        from gitopsd.errors import GitopsdError

        try:
            config = load_config(config_path)
        except GitopsdError as exc:
            _fail(str(exc))
            raise
        docs = {r.name: read_status(config.state_dir_of(r), model) for r in config.repositories}
    if model and not any(doc["models"] for doc in docs.values()):
        _fail(f"no model {model!r} in the applied commit")
    if as_json:
        # Indented for a person; compact (and several times faster on 10,000 models) for a pipe.
        out: Any = next(iter(docs.values())) if len(docs) == 1 else {"repositories": docs}
        click.echo(json.dumps(out, indent=2 if sys.stdout.isatty() else None))
        return
    for name, doc in docs.items():
        if name:
            click.echo(f"== {name} ==")
        click.echo(render(doc, wide=wide))


@cli.command()
@click.argument("model")
@click.option("--run", "run_id", help="A specific run (default: the model's latest).")
@click.pass_context
def logs(ctx: click.Context, model: str, run_id: str | None) -> None:
    """Print the output of MODEL's latest run."""
    import sqlite3

    db = _state_dir(ctx) / "state.db"
    if not db.exists():
        _fail("nothing reconciled yet")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    where, args = ("id = ? AND model = ?", (run_id, model)) if run_id else ("model = ?", (model,))
    row = conn.execute(f"SELECT id, run_dir FROM runs WHERE {where} ORDER BY rowid DESC LIMIT 1", args).fetchone()
    conn.close()
    if row is None:
        _fail(f"no run of {model!r}" + (f" with id {run_id}" if run_id else ""))
    files = sorted((Path(row[1]) / "logs").glob("*"))
    if not files:
        _fail(f"run {row[0]} has no logs yet")
    for path in files:
        click.echo(f"==> {path} <==")
        click.echo(path.read_text(errors="replace"), nl=False)


@cli.group()
def registry() -> None:
    """Registered versions: list, show, verify."""


def _open_registry(ctx: click.Context) -> Any:
    from gitopsd.registry import Registry

    return Registry(_state_dir(ctx) / "registry.db", readonly=True)


@registry.command("list")
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def registry_list(ctx: click.Context, model: str | None, as_json: bool) -> None:
    """List versions (of MODEL, or all)."""
    with _open_registry(ctx) as reg:
        versions = reg.list(model)
    if as_json:
        click.echo(json.dumps([_version_doc(v) for v in versions], indent=2))
        return
    for v in versions:
        shown = ", ".join(f"{k}={val:.4g}" for k, val in sorted(v.metrics.items()))
        click.echo(
            f"{v.label:<24} sha256:{v.artifact.sha256[:12]}  {v.artifact.size:>10} B  "
            f"commit {v.lineage.get('commit', '')[:12]}  {shown}"
        )


def _version_doc(v: Any) -> dict[str, Any]:
    return {
        "model": v.model,
        "version": v.number,
        "label": v.label,
        "run_id": v.run_id,
        "run_key": v.run_key,
        "artifact": {"sha256": v.artifact.sha256, "size": v.artifact.size, "uri": v.artifact.uri},
        "metrics": v.metrics,
        "gates": v.gates,
        "lineage": v.lineage,
        "created_at": v.created_at,
    }


def _get_version(ctx: click.Context, label: str) -> Any:
    from gitopsd.registry import parse_label

    try:
        name, number = parse_label(label)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    with _open_registry(ctx) as reg:
        version = reg.get(name, number)
    if version is None:
        _fail(f"no version {label}")
    return version


@registry.command("show")
@click.argument("label")
@click.pass_context
def registry_show(ctx: click.Context, label: str) -> None:
    """Show one version (NAME@N) as JSON."""
    click.echo(json.dumps(_version_doc(_get_version(ctx, label)), indent=2))


def _artifact_store(ctx: click.Context, uri: str | None, endpoint_url: str | None) -> Any:
    """The store named on the command line, else the one the applied commit's gitops.yaml names."""
    from gitopsd.store import open_store

    state_dir = _state_dir(ctx)
    lock_days = None
    if uri is None:
        config = _applied_registry_config(state_dir)
        if config is not None:
            uri, endpoint_url, lock_days = (
                config.artifacts,
                endpoint_url or config.endpoint_url,
                config.object_lock_days,
            )
    return open_store(uri, state_dir / "artifacts", endpoint_url=endpoint_url, object_lock_days=lock_days)


def _applied_registry_config(state_dir: Path) -> Any:
    import sqlite3

    from gitopsd.source import REPO_SPEC, Source
    from gitopsd.specload import load_repository

    db = state_dir / "state.db"
    if not db.exists() or not (state_dir / "source.git").exists():
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    row = conn.execute("SELECT url, applied_commit FROM sources WHERE id = 1").fetchone()
    conn.close()
    if row is None or row[1] is None:
        return None
    text = Source(row[0], state_dir / "source.git").read(row[1], REPO_SPEC)
    return load_repository(text.decode(), REPO_SPEC).registry if text else None


_store_options = [
    click.option("--store", "store_uri", help="Artifact store URI (default: the one gitops.yaml names)."),
    click.option("--endpoint-url", help="Endpoint of an S3-compatible store."),
]


def _with_store_options(func: Any) -> Any:
    for option in reversed(_store_options):
        func = option(func)
    return func


@registry.command("verify")
@_with_store_options
@click.pass_context
def registry_verify(ctx: click.Context, store_uri: str | None, endpoint_url: str | None) -> None:
    """Re-hash every version's artifact and check its record; exit 1 if anything is missing or altered."""
    from gitopsd.recovery import version_record

    store = _artifact_store(ctx, store_uri, endpoint_url)
    with _open_registry(ctx) as reg:
        versions = reg.list()
        problems = reg.verify(store)
    for version in versions:
        if store.get_record(version.model, version.number) != version_record(version):
            problems.append(f"{version.label}: its record in {store.uri} is missing or differs from the registry")
    for line in problems:
        click.echo(line, err=True)
    if problems:
        _fail(f"{len(problems)} problem(s) in {len(versions)} version(s)")
    click.echo(f"{len(versions)} version(s) verified: artifacts and records intact in {store.uri}")


@registry.command("rebuild")
@_with_store_options
@click.pass_context
def registry_rebuild(ctx: click.Context, store_uri: str | None, endpoint_url: str | None) -> None:
    """Recreate registry.db from the artifact store's records alone (disaster recovery)."""
    from gitopsd.errors import GitopsdError
    from gitopsd.recovery import rebuild

    store = _artifact_store(ctx, store_uri, endpoint_url)
    try:
        versions, moves = rebuild(store, _state_dir(ctx) / "registry.db")
    except GitopsdError as exc:
        _fail(str(exc))
        raise
    click.echo(
        f"rebuilt {_state_dir(ctx) / 'registry.db'} from {store.uri}: {versions} version(s), {moves} alias move(s)"
    )


@cli.command()
@click.argument("label")
@click.pass_context
def lineage(ctx: click.Context, label: str) -> None:
    """Where NAME@N came from: commit, code tree, data, job, host, metrics."""
    v = _get_version(ctx, label)
    lin = v.lineage
    job = lin.get("job", {})
    rows = [
        ("version", v.label),
        ("artifact", f"sha256:{v.artifact.sha256} ({v.artifact.size} bytes)"),
        ("repository", lin.get("repo")),
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
    if lin.get("base"):
        rows.append(("base", f"{lin['base']['label']} (from {lin['base']['ref']}, sha256:{lin['base']['sha256']})"))
        rows.append(("chain", " <- ".join(_base_chain(ctx, v))))
    for item in lin.get("data", []):
        rows.append(("data", f"{item['uri']} sha256:{item['sha256']}"))
    for gate in v.gates:
        rows.append(("gate", f"{gate['gate']}: {gate['value']} {'passed' if gate['passed'] else 'FAILED'}"))
    rows.append(("metrics", ", ".join(f"{k}={val:.4g}" for k, val in sorted(v.metrics.items()))))
    for key, value in rows:
        click.echo(f"{key:<11} {value}")


@cli.command()
@click.argument("label")
@click.option("--alias", required=True, help="The alias to move, e.g. production.")
@click.option(
    "--clone",
    type=click.Path(path_type=Path, file_okay=False),
    default=".",
    show_default=True,
    help="A local clone of the GitOps repository to commit in.",
)
@click.option("--force", is_flag=True, help="Commit even if this state directory has no such version.")
@click.pass_context
def promote(ctx: click.Context, label: str, alias: str, clone: Path, force: bool) -> None:
    """Point ALIAS at LABEL (NAME@N) by a commit in a local clone; review and push it yourself."""
    from gitopsd.errors import PermanentError, SpecError
    from gitopsd.promote import promote as do_promote
    from gitopsd.registry import parse_label

    try:
        name, number = parse_label(label)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if not force:
        with _open_registry(ctx) as reg:
            if reg.get(name, number) is None:
                _fail(f"{label} is not a registered version in {_state_dir(ctx)} (use --force to commit anyway)")
    try:
        path, commit = do_promote(clone, name, number, alias)
    except (PermanentError, SpecError) as exc:
        _fail(str(exc))
        raise
    click.echo(f"{path}: {alias} -> {label}, committed {commit[:12]} (not pushed)")


@cli.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def history(ctx: click.Context, model: str, as_json: bool) -> None:
    """MODEL's versions and alias moves, oldest first, with their commits."""
    from gitopsd.aliases import AliasBook

    with _open_registry(ctx) as reg:
        versions = reg.list(model)
        moves = AliasBook(reg.conn).history(model)
    entries: list[dict[str, Any]] = [
        {"at": v.created_at, "event": "registered", "version": v.number, "commit": v.lineage.get("commit", ""),
         "subject": v.lineage.get("commit_info", {}).get("subject", ""), "run_key": v.run_key,
         "artifact": v.artifact.sha256}
        for v in versions
    ]  # fmt: skip
    entries += [
        {"at": m.at, "event": f"alias {m.kind}", "alias": m.alias, "version": m.version, "previous": m.previous,
         "commit": m.commit_id, "subject": m.subject}
        for m in moves
    ]  # fmt: skip
    entries.sort(key=lambda e: e["at"])
    if not entries:
        _fail(f"no history for {model!r}")
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
        if e["event"] == "registered":
            what = f"{model}@{e['version']} registered (sha256:{e['artifact'][:12]})"
        else:
            previous = f"{model}@{e['previous']}" if e["previous"] else "-"
            target = f"{model}@{e['version']}" if e["version"] else "nothing"
            what = f"{e['alias']} {e['event'].removeprefix('alias ')}: {previous} -> {target}"
        click.echo(f"{when}  {e['commit'][:12]}  {what}  ({e['subject']})")


def _base_chain(ctx: click.Context, version: Any) -> list[str]:
    """NAME@N, then the version it was fine-tuned from, and so on back to a model trained from scratch."""
    from gitopsd.registry import parse_label

    chain = [version.label]
    with _open_registry(ctx) as reg:
        while version is not None and version.lineage.get("base") and len(chain) < 100:
            label = version.lineage["base"]["label"]
            chain.append(label)
            version = reg.get(*parse_label(label))
    return chain


@cli.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    envvar="GITOPSD_CONFIG",
    help="The daemon's TOML configuration [env: GITOPSD_CONFIG].",
)
@click.option("--listen", help="Override http.listen, e.g. 127.0.0.1:0 for any free port.")
def run(config_path: Path, listen: str | None) -> None:
    """Run the daemon: poll, watch and webhooks trigger reconcile passes; systemd notify; HTTP API."""
    from gitopsd.daemon import Daemon
    from gitopsd.errors import GitopsdError

    try:
        daemon = Daemon(config_path, listen=listen)
    except GitopsdError as exc:
        _fail(str(exc))
        raise
    raise SystemExit(daemon.run())


@cli.command()
@click.option("--repo", "repo_name", help="Only this repository (default: all).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="GITOPSD_CONFIG",
    help="Find the daemon's address in this configuration [env: GITOPSD_CONFIG].",
)
@click.option("--url", help="The daemon's base URL (default: from --config, else http://127.0.0.1:9090).")
def trigger(repo_name: str | None, config_path: Path | None, url: str | None) -> None:
    """Ask the running daemon for a reconcile pass now."""
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    if url is None:
        url = "http://127.0.0.1:9090"
        if config_path is not None:
            from gitopsd.config import load_config
            from gitopsd.errors import GitopsdError

            try:
                host, port = load_config(config_path).http.address()
            except GitopsdError as exc:
                _fail(str(exc))
                raise
            url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    target = f"{url.rstrip('/')}/api/v1/trigger" + (f"?repo={quote(repo_name)}" if repo_name else "")
    try:
        with urllib.request.urlopen(urllib.request.Request(target, method="POST"), timeout=10) as answer:
            doc = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        _fail(f"{target}: {exc.code} {exc.read().decode(errors='replace').strip()}")
        raise
    except OSError as exc:
        _fail(f"cannot reach the daemon at {url}: {exc}")
        raise
    click.echo("triggered: " + ", ".join(doc["triggered"]))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def gpus(as_json: bool) -> None:
    """This host's NVIDIA GPUs and MIG instances, as the nvidia backend sees them (NVML)."""
    from gitopsd.errors import GitopsdError

    try:
        from gitopsd_nvidia.inventory import as_json as inventory_json
        from gitopsd_nvidia.inventory import read_inventory, render_table
    except ImportError:
        _fail("the nvidia backend is not installed (pip install -e backends/nvidia)")
        raise
    try:
        inventory = read_inventory()
    except GitopsdError as exc:
        _fail(str(exc))
        raise
    click.echo(json.dumps(inventory_json(inventory), indent=2) if as_json else render_table(inventory))


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
