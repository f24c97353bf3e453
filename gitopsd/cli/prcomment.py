"""The plan comment on a pull or merge request, as pure decisions: where it goes, what it says, which one is ours.

`gitopsd comment` runs in a CI job and keeps ONE comment per pull request up to date: the first push posts it,
every later push edits it. This module decides everything that needs no network: the forge's API shape
(GitHub, GitLab, Gitea/Forgejo), the target read from the CI's standard environment variables, the body (the
marker line first, cut to the forge's size limit without leaving a code block or a `<details>` open), which
earlier comment is ours, which `Link: rel="next"` page may be followed (only on the API's own origin: the
token goes with every request) and the one line a refused request turns into. `forgeclient.py` does the I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

MARKER = "<!-- gitopsd:plan -->"  # the first line of `gitopsd plan --format markdown` (a contract with plan)
FORGES = ("github", "gitlab", "gitea")
DEFAULT_TOKEN_ENV = {"github": "GITHUB_TOKEN", "gitlab": "GITOPSD_GITLAB_TOKEN", "gitea": "GITHUB_TOKEN"}
# GitHub refuses a body over 65,536 characters; GitLab's notes take 1,000,000. Gitea and Forgejo document
# none: the GitHub limit keeps a plan comment readable there too.
BODY_LIMIT = {"github": 65536, "gitlab": 1_000_000, "gitea": 65536}


class CommentError(Exception):
    """Why the plan comment could not be posted: one line for the CI log, never a token."""


@dataclass(frozen=True, kw_only=True)
class Target:
    """The pull/merge request whose plan comment this run keeps, and how to reach its forge's API."""

    forge: str
    api: str  # the API root, no trailing slash: https://api.github.com, https://gitlab.example/api/v4, .../api/v1
    project: str  # owner/name (GitHub, Gitea) or the project id or path (GitLab)
    number: int  # the pull request number (GitHub, Gitea) or the merge request iid (GitLab)
    token: str = field(repr=False)
    token_env: str
    run_url: str | None = None  # the CI job or run, for a comment that has no plan to show

    @property
    def comments_url(self) -> str:
        """Where a new comment is created."""
        if self.forge == "gitlab":
            return f"{self.api}/projects/{quote(self.project, safe='')}/merge_requests/{self.number}/notes"
        return f"{self.api}/repos/{self.project}/issues/{self.number}/comments"

    @property
    def list_url(self) -> str:
        """The first page of the comments, oldest first (Gitea and Forgejo list them whole)."""
        if self.forge == "gitlab":
            return f"{self.comments_url}?sort=asc&order_by=created_at&per_page=100"
        return self.comments_url + ("?per_page=100" if self.forge == "github" else "")

    def comment_url(self, comment_id: int) -> str:
        """Where one comment is edited."""
        if self.forge == "gitlab":
            return f"{self.api}/projects/{quote(self.project, safe='')}/merge_requests/{self.number}/notes/{comment_id}"
        return f"{self.api}/repos/{self.project}/issues/comments/{comment_id}"

    @property
    def edit_method(self) -> str:
        return "PUT" if self.forge == "gitlab" else "PATCH"

    @property
    def user_url(self) -> str:
        """Who the token belongs to (GitHub's Actions token may not ask: then comments by bots count as ours)."""
        return f"{self.api}/user"

    def headers(self) -> dict[str, str]:
        """The request headers, the token among them in each forge's documented form."""
        common = {"Accept": "application/json", "User-Agent": "gitopsd-comment"}
        if self.forge == "github":
            return {**common, "Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28",
                    "Authorization": f"Bearer {self.token}"}  # fmt: skip
        if self.forge == "gitlab":
            return {**common, "PRIVATE-TOKEN": self.token}
        return {**common, "Authorization": f"token {self.token}"}

    @property
    def what(self) -> str:
        """`pull request #7 of ml/demo` or `merge request !7 of project 42`, for messages."""
        if self.forge == "gitlab":
            return f"merge request !{self.number} of project {self.project}"
        return f"pull request #{self.number} of {self.project}"


@dataclass(frozen=True, kw_only=True)
class Comment:
    """One comment as the forge lists it, reduced to what choosing ours needs."""

    id: int
    body: str
    author: str
    bot: bool
    system: bool = False  # GitLab's notes of events ("added 1 commit")


def detect_forge(env: Mapping[str, str]) -> str:
    """The forge whose CI runs this job, from its marker variable."""
    if env.get("GITLAB_CI"):
        return "gitlab"
    if env.get("GITEA_ACTIONS") or env.get("FORGEJO_ACTIONS") or env.get("FORGEJO_TOKEN"):
        return "gitea"
    if env.get("GITHUB_ACTIONS"):
        return "github"
    raise CommentError("cannot tell which forge runs this job (no GITHUB_ACTIONS, GITLAB_CI or GITEA_ACTIONS "
                       "in the environment): give --forge github|gitlab|gitea")  # fmt: skip


def _need(env: Mapping[str, str], name: str, why: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise CommentError(f"${name} is not set: {why}")
    return value


def _api_root(url: str, name: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise CommentError(f"${name} is not an http(s) URL: {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise CommentError(f"${name} must be a plain API URL, without credentials, query or fragment")
    return url.rstrip("/")


def pull_request_number(event: bytes, source: str) -> int:
    """`pull_request.number` of a GitHub or Gitea event payload (the file $GITHUB_EVENT_PATH names)."""
    try:
        payload = json.loads(event)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommentError(f"{source} is not JSON: {exc}") from None
    pull = payload.get("pull_request") if isinstance(payload, dict) else None
    number = pull.get("number") if isinstance(pull, dict) else None
    if isinstance(number, bool) or not isinstance(number, int) or number <= 0:
        raise CommentError(f"{source} has no pull_request.number: this job did not run for a pull request "
                           "(run it on `pull_request`, or give --number)")  # fmt: skip
    return number


def target_from_env(
    forge: str,
    env: Mapping[str, str],
    *,
    event: bytes | None = None,
    number: int | None = None,
    token_env: str | None = None,
) -> Target:
    """The pull/merge request of this CI job, read from the CI's standard variables. `event` is the content of
    $GITHUB_EVENT_PATH (GitHub, Gitea), `number` overrides the request number, `token_env` names the variable
    that holds the token (default: GITHUB_TOKEN on GitHub and Gitea, GITOPSD_GITLAB_TOKEN on GitLab)."""
    if forge not in FORGES:
        raise CommentError(f"unknown forge {forge!r}: one of {', '.join(FORGES)}")
    token_env = token_env or DEFAULT_TOKEN_ENV[forge]
    token = env.get(token_env, "").strip()
    if not token:
        hint = {
            "github": "pass it to the step: `env: GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}`",
            "gitlab": "CI_JOB_TOKEN cannot write merge request notes: create a project access token (role "
            "Reporter, scope api), store it as a masked CI/CD variable and name it here",
            "gitea": "pass it to the step: `env: GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}`",
        }[forge]
        raise CommentError(f"${token_env} is not set: it must hold a token that may comment; {hint}")
    if not re.fullmatch(r"[\x21-\x7e]+", token):  # it goes into a header: a line break would start another
        raise CommentError(f"${token_env} holds characters no token has (a space, a line break, a non-ASCII "
                           "letter): check the secret")  # fmt: skip
    if forge == "gitlab":
        api = _api_root(_need(env, "CI_API_V4_URL", "not a GitLab CI job?"), "CI_API_V4_URL")
        project = _need(env, "CI_PROJECT_ID", "not a GitLab CI job?")
        if number is None:
            iid = _need(env, "CI_MERGE_REQUEST_IID",
                        'this job did not run for a merge request (rules: - if: $CI_PIPELINE_SOURCE == '
                        '"merge_request_event"), or give --number')  # fmt: skip
            if not iid.isdigit() or int(iid) <= 0:
                raise CommentError(f"$CI_MERGE_REQUEST_IID is not a number: {iid!r}")
            number = int(iid)
        run_url = env.get("CI_JOB_URL") or None
    else:
        default_api = "https://api.github.com" if forge == "github" else None
        raw_api = env.get("GITHUB_API_URL", "").strip() or default_api
        if raw_api is None:
            raise CommentError("$GITHUB_API_URL is not set: Gitea and Forgejo Actions set it to https://HOST/api/v1")
        api = _api_root(raw_api, "GITHUB_API_URL")
        project = _need(env, "GITHUB_REPOSITORY", "not an Actions job?")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", project) or ".." in project:
            raise CommentError(f"$GITHUB_REPOSITORY is not OWNER/NAME: {project!r}")
        if number is None:
            path = _need(env, "GITHUB_EVENT_PATH", "not an Actions job? (or give --number)")
            if event is None:
                raise CommentError(f"cannot read {path}")
            number = pull_request_number(event, path)
        server, run = env.get("GITHUB_SERVER_URL", "").rstrip("/"), env.get("GITHUB_RUN_ID", "")
        run_url = f"{server}/{project}/actions/runs/{run}" if server and run else None
    if number <= 0:
        raise CommentError(f"--number must be positive, not {number}")
    return Target(forge=forge, api=api, project=project, number=number, token=token, token_env=token_env,
                  run_url=run_url)  # fmt: skip


def parse_comments(forge: str, payload: Any) -> list[Comment]:
    """The comments of one listed page; entries of an unexpected shape are left out, not guessed at."""
    if not isinstance(payload, list):
        raise CommentError(f"the {forge} API answered the comment list with {type(payload).__name__}, not a list")
    found = []
    for item in payload:
        if not isinstance(item, dict):
            continue
        ident, body = item.get("id"), item.get("body")
        who = item.get("author" if forge == "gitlab" else "user")
        if isinstance(ident, bool) or not isinstance(ident, int) or not isinstance(body, str):
            continue
        author = who.get("username" if forge == "gitlab" else "login") if isinstance(who, dict) else None
        bot = isinstance(who, dict) and (who.get("type") == "Bot" or who.get("bot") is True)
        found.append(Comment(id=ident, body=body, author=author if isinstance(author, str) else "",
                             bot=bot, system=item.get("system") is True))  # fmt: skip
    return found


def user_login(forge: str, payload: Any) -> str | None:
    """The login of the token's user from GET /user, if the answer has one."""
    if not isinstance(payload, dict):
        return None
    login = payload.get("username" if forge == "gitlab" else "login")
    return login if isinstance(login, str) and login else None


def is_plan_comment(body: str) -> bool:
    """A comment this command wrote: its first line is the marker."""
    return body.split("\n", 1)[0].strip() == MARKER


# The accounts the forges' CI tokens comment as; no person can sign up under these names.
CI_ACCOUNTS = frozenset({"github-actions[bot]", "gitea-actions", "forgejo-actions"})


def choose_ours(comments: list[Comment], me: str | None) -> Comment | None:
    """The earliest plan comment written by the token's user (`me`), or, when the forge would not say who that is
    (GitHub's Actions token), by a bot or CI account. Anyone may paste the marker into a comment: a person's
    comment is never edited, whatever it says."""
    for comment in comments:
        if comment.system or not is_plan_comment(comment.body):
            continue
        if (comment.author == me) if me is not None else (comment.bot or comment.author in CI_ACCOUNTS):
            return comment
    return None


def next_page(link_header: str | None, api: str) -> str | None:
    """The `rel="next"` URL of a Link header, if it is on the API's own origin (scheme, host and port): the
    token goes with every request, so a page elsewhere is an error, not a place to follow."""
    if not link_header:
        return None
    for part in link_header.split(","):
        match = re.match(r"\s*<([^>]*)>\s*;(.*)", part)
        if match and re.search(r'rel="?([^";]*\s)?next(\s[^";]*)?"?', match.group(2)):
            url = match.group(1)
            if not same_origin(url, api):
                raise CommentError(f"the forge's next page is on another origin ({urlsplit(url).netloc or url!r}) "
                                   f"than {api}: not following it with the token")  # fmt: skip
            return url
    return None


def same_origin(url: str, api: str) -> bool:
    a, b = urlsplit(url), urlsplit(api)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port) and a.path.startswith(b.path)


def _fence(text: str) -> str:
    """A backtick fence longer than any run of backticks in `text`, so the text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def compose_body(plan: str | None, *, appendix: list[tuple[str, str]], run_url: str | None, limit: int) -> str:
    """The comment: the marker line, the plan (or a line saying there is none), each (title, text) of `appendix`
    that has text as a collapsed code block, cut to `limit` characters with a last line saying so."""
    plan = (plan or "").replace("\r\n", "\n")
    lines = plan.split("\n")
    if lines[0].strip() == MARKER:
        plan = "\n".join(lines[1:])
    where = f" ([the job log]({run_url}))" if run_url else " (see the job log)"
    if not plan.strip():
        plan = f"**gitopsd plan** wrote no plan for this change{where}."
    parts = [MARKER + "\n" + plan.strip("\n")]
    for title, raw in appendix:
        text = raw.replace("\r\n", "\n").strip("\n")
        if text.strip():
            fence = _fence(text)
            parts.append(f"<details><summary>{title}</summary>\n\n{fence}text\n{text}\n{fence}\n\n</details>")
    return truncate("\n\n".join(parts) + "\n", limit, where)


def truncate(body: str, limit: int, where: str = "") -> str:
    """`body` if it fits in `limit` characters, else its longest prefix of whole lines that fits with an open
    code fence and open `<details>` closed and a last line saying how much was left out."""
    if len(body) <= limit:
        return body
    note = (f"\n**The plan is cut here:** {len(body):,} characters do not fit in one comment "
            f"(at most {limit:,}){where}.\n")  # fmt: skip
    first, _, rest = body.partition("\n")
    state = _Open().after(first)
    kept = [first]  # the marker line stays, however small the limit: it is how the next run finds the comment
    size = len(first) + 1
    for line in rest.split("\n"):
        after = state.after(line)
        if size + len(line) + 1 + len(after.closing()) + len(note) > limit:
            break
        kept.append(line)
        size += len(line) + 1
        state = after
    return "\n".join(kept) + "\n" + state.closing() + note


@dataclass(frozen=True, kw_only=True)
class _Open:
    """The markdown blocks left open so far: a code fence (its backticks) and how many `<details>`."""

    fence: str | None = None
    details: int = 0

    def after(self, line: str) -> _Open:
        stripped = line.strip()
        if self.fence is not None:
            closes = stripped.startswith(self.fence) and set(stripped) == {"`"}
            return _Open(fence=None if closes else self.fence, details=self.details)
        match = re.match(r"(`{3,})", stripped)
        if match:
            return _Open(fence=match.group(1), details=self.details)
        opened = len(re.findall(r"<details\b", line, re.I)) - len(re.findall(r"</details>", line, re.I))
        return _Open(fence=None, details=max(0, self.details + opened))

    def closing(self) -> str:
        """What closes the open fence and `<details>` blocks."""
        return (f"{self.fence}\n" if self.fence else "") + "</details>\n" * self.details


def refusal(status: int, method: str, url: str, target: Target, message: str | None) -> str:
    """The one line a refused request becomes: what the status means for this command, and what to do."""
    said = f" ({message})" if message else ""
    where = f"{method} {url}"
    if status == 401:
        return (f"the {target.forge} API refused the token in ${target.token_env} (401 Unauthorized){said}: it is "
                "missing, expired or revoked")  # fmt: skip
    if status == 403:
        need = {
            "github": "the workflow needs `permissions: pull-requests: write`; a pull request from a fork gets "
            "a read-only token, so the plan cannot be posted there (the check still fails on a refusal)",
            "gitlab": "the token needs the api scope and at least the Reporter role in the project",
            "gitea": "the token needs write access to issues and pull requests; a pull request from a fork gets "
            "a read-only token",
        }[target.forge]
        return f"the {target.forge} API forbids this token to comment on {target.what} (403 Forbidden){said}: {need}"
    if status == 404:
        return (f"{target.what} was not found (404 on {where}){said}: check the API URL and the request number, "
                "and that the token can see the repository")  # fmt: skip
    if status == 413 or (status == 422 and message and "too long" in message.lower()):
        return f"the {target.forge} API refused the comment as too large ({status}){said}"
    return f"the {target.forge} API answered {status} to {where}{said}"


def forge_message(payload: Any) -> str | None:
    """The error message a forge puts in its JSON answer (`message`, or GitLab's `error`), kept short."""
    if isinstance(payload, dict):
        for key in ("message", "error", "errors"):
            value = payload.get(key)
            if isinstance(value, str | list | dict) and value:
                text = value if isinstance(value, str) else json.dumps(value)
                return " ".join(text.split())[:300]
    return None
