"""`gitopsd comment PLAN.md`: post the plan on the CI job's pull or merge request, as ONE comment kept up to date.

A thin shell: it reads the CI's environment and the files, and prints one line of what it did or why it could
not. `prcomment.py` decides, `forgeclient.py` talks HTTP. The token is read from an environment variable only
(never an argument, which `ps` and CI logs show) and appears in no output.
"""

from __future__ import annotations

import os
from pathlib import Path

from gitopsd.cli.args import Context, arg, command, opt, path_arg
from gitopsd.cli.common import fail
from gitopsd.cli.console import echo

MAX_INPUT_BYTES = 8 * 1024 * 1024  # a plan or log larger than this is cut anyway: read no more


def _read(path: Path) -> str | None:
    """A text file's first MAX_INPUT_BYTES (the rest would not fit a comment), or None if it does not exist."""
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_INPUT_BYTES).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")


@command(
    "comment",
    arg("plan_file", type=path_arg(dir_okay=False)),
    opt(
        "--forge",
        choices=["auto", "github", "gitlab", "gitea"],
        default="auto",
        show_default=True,
        help="The forge whose API gets the comment; auto: from GITHUB_ACTIONS, GITLAB_CI, GITEA_ACTIONS. Use gitea "
        "for Forgejo too.",
    ),
    opt(
        "--token-env",
        metavar="NAME",
        help="The environment variable that holds the token (default: GITHUB_TOKEN on GitHub and Gitea, "
        "GITOPSD_GITLAB_TOKEN on GitLab, whose CI_JOB_TOKEN cannot write notes).",
    ),
    opt("--number", metavar="INTEGER", type=int, help="The pull/merge request (default: from the CI's environment)."),
    opt(
        "--append",
        dest="appendix",
        metavar="FILE",
        type=path_arg(dir_okay=False),
        multiple=True,
        help="A log to add as a collapsed code block when it is not empty (e.g. the output of gitopsd validate).",
    ),
    opt(
        "--timeout", metavar="FLOAT", type=float, default=30.0, show_default=True, help="Seconds each request may take."
    ),
)
def comment(
    ctx: Context,
    plan_file: Path,
    forge: str,
    token_env: str | None,
    number: int | None,
    appendix: tuple[Path, ...],
    timeout: float,
) -> None:
    """Post PLAN_FILE (the output of `gitopsd plan --format markdown`) on this CI job's pull or merge request,
    editing the plan comment an earlier run posted instead of adding one per push.

    The comment is found by its first line, <!-- gitopsd:plan -->, among the comments of the token's user.
    A missing or empty PLAN_FILE posts a line saying there is no plan. Exit 1 when the forge refuses."""
    from gitopsd.cli.forgeclient import upsert
    from gitopsd.cli.prcomment import BODY_LIMIT, CommentError, compose_body, detect_forge, target_from_env

    env = dict(os.environ)
    token = ""
    try:
        chosen = detect_forge(env) if forge == "auto" else forge
        event_path = env.get("GITHUB_EVENT_PATH", "")
        event = None
        if chosen != "gitlab" and number is None and event_path:
            try:
                with open(event_path, "rb") as handle:
                    event = handle.read(MAX_INPUT_BYTES)
            except OSError as exc:
                raise CommentError(f"cannot read $GITHUB_EVENT_PATH {event_path}: {exc.strerror}") from None
        target = target_from_env(chosen, env, event=event, number=number, token_env=token_env)
        token = target.token
        logs = [(f"Output of <code>{_title(path)}</code>", _read(path) or "") for path in appendix]
        body = compose_body(_read(plan_file), appendix=logs, run_url=target.run_url, limit=BODY_LIMIT[chosen])
        posted = upsert(target, body, timeout=timeout, warn=lambda line: echo(_clean(line, token), err=True))
    except CommentError as exc:
        fail(_clean(str(exc), token))
    where = f": {posted.url}" if posted.url else ""
    echo(f"{posted.action} the plan comment (id {posted.comment_id}) on {target.what}{where}")


def _title(path: Path) -> str:
    """The name an appended log is shown by: its file name without the extension, escaped for HTML."""
    import html

    return html.escape(path.stem)


def _clean(text: str, token: str) -> str:
    """`text` with the token taken out, should any answer ever echo it."""
    return text.replace(token, "***") if token else text
