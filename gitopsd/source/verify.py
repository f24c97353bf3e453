"""Signed commits, an operator option: every commit new to the daemon must carry a good signature from an allowed key.

Argo CD and Flux check the signature of the tip only; a push whose tip is signed can still carry unsigned
commits below it, and the tip's tree contains their changes. So gitopsd checks every commit between the one it
applied last and the new tip: those reachable from the tip and not from the applied commit (`git rev-list
APPLIED..TIP`). The same rule covers a force-push (every commit new relative to the applied one is checked)
and merges (a merge commit and every commit it brings in are commits like any other). If one of them is not
signed by an allowed key, nothing of the new tip is applied, and the last verified commit stays in force.

Which commits are checked:

- **After a commit has been applied:** every commit reachable from the tip and not from the applied commit.
  A bad commit stays between the applied commit and any tip built on it, so a good commit pushed on top of a
  bad one is refused too, until history no longer contains it (a force-push back to signed history).
- **On the very first pass** (nothing applied yet): the tip only, unless the operator names `since`, a commit
  they trust; then every commit reachable from the tip and not from `since` is checked. Checking all history
  would refuse every repository whose old history predates signing. `since` also bounds every later pass:
  commits reachable from it are never checked.
- **At most `max_commits` per pass** (default 10,000): a push bringing more is refused as a whole, with a
  message that says so, rather than spending the pass on it; the operator raises the limit or moves `since`.

The applied commit is kept alive in the mirror with the ref `refs/gitopsd/applied`, so that a force-push and a
later `git gc` cannot remove the commit the range is measured from. The verdict on each commit is remembered, and
the last verdict for an unchanged (applied, tip) pair is reused, so a pass whose tip did not move costs nothing;
all of it is forgotten when the allowed-signers file or the keyring changes (a key added or revoked).

`gitopsd validate` and `gitopsd plan` on a pull request's working tree or branch are review gates on unmerged
work and do not check signatures unless asked to; this policy is for what the daemon applies.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gitopsd.source.signatures import Problem, SignatureChecker

if TYPE_CHECKING:  # a policy is read with the operator's configuration, which `gitopsd validate` also reads
    import pygit2

APPLIED_REF = "refs/gitopsd/applied"
MAX_LISTED = 5
"""A refusal names at most this many bad commits; checking stops there."""

_COMMIT_ID = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


@dataclass(frozen=True, kw_only=True)
class VerifyPolicy:
    """Which keys may sign the commits the daemon applies. At least one of the two key sets is required.

    `allowed_signers`: an SSH allowed-signers file (git's `gpg.ssh.allowedSignersFile` format).
    `gpg_keyring`: an OpenPGP keyring file (`gpg --export KEYID... > allowed.gpg`) or a GnuPG home directory;
    every key in it is allowed.
    `since`: the full id of a commit the operator trusts; commits reachable from it are never checked.
    `max_commits`: the most new commits one pass checks; more refuses the push.
    `timeout_s`: the limit on each call of gpgv or ssh-keygen.
    """

    allowed_signers: Path | None = None
    gpg_keyring: Path | None = None
    since: str | None = None
    max_commits: int = 10_000
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.allowed_signers is None and self.gpg_keyring is None:
            raise ValueError("signature verification needs allowed_signers, gpg_keyring or both")
        if self.since is not None and not _COMMIT_ID.match(self.since):
            raise ValueError(f"verify since: {self.since!r} is not a full commit id (40 or 64 hex digits)")
        if self.max_commits < 1:
            raise ValueError(f"verify max_commits: {self.max_commits} must be at least 1")
        if self.timeout_s <= 0:
            raise ValueError(f"verify timeout_s: {self.timeout_s} must be positive")


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """Whether the new tip may be applied; if not, `message` names the commits and why."""

    ok: bool
    checked: int = 0
    message: str = ""
    final: bool = True


def describe(repo: pygit2.Repository, commit: str) -> str:
    """`abcdef123456 "subject"`, the subject cut to one printable line (it is written by the pusher)."""
    import pygit2

    obj = repo.get(commit)
    subject = obj.message.splitlines()[0] if isinstance(obj, pygit2.Commit) and obj.message else ""
    shown = "".join(ch if ch.isprintable() else "?" for ch in subject[:72])
    return f'{commit[:12]} "{shown}"'


def new_commits(repo: pygit2.Repository, tip: str, trusted: Sequence[str], limit: int) -> list[str]:
    """Commits reachable from `tip` and from none of `trusted`, oldest first; at most `limit` + 1 of them."""
    import pygit2

    walker = repo.walk(pygit2.Oid(hex=tip), pygit2.enums.SortMode.TOPOLOGICAL)
    for commit in trusted:
        walker.hide(pygit2.Oid(hex=commit))
    found: list[str] = []
    for obj in walker:
        found.append(str(obj.id))
        if len(found) > limit:
            break
    found.reverse()
    return found


class CommitVerifier:
    """Decides whether a new tip may be applied, under one `VerifyPolicy`; remembers what it verified."""

    def __init__(self, policy: VerifyPolicy, checker: SignatureChecker | None = None) -> None:
        self.policy = policy
        self.checker = checker or SignatureChecker(
            allowed_signers=policy.allowed_signers, gpg_keyring=policy.gpg_keyring, timeout_s=policy.timeout_s
        )
        self._good: set[str] = set()
        self._bad: dict[str, Problem] = {}
        self._last: tuple[tuple[str | None, str], Verdict] | None = None
        self._keys_seen: tuple[tuple[int, int, int] | None, ...] = ()

    def verify(self, repo: pygit2.Repository, applied: str | None, tip: str) -> Verdict:
        """May `tip` replace `applied`? Every commit new relative to `applied` (or to `since`) is checked."""
        if applied == tip:
            return Verdict(ok=True)
        keys_now = self._keys_stamp()
        if keys_now != self._keys_seen:  # the operator changed the allowed keys: every verdict is asked again
            self._good.clear()
            self._bad.clear()
            self._last = None
            self._keys_seen = keys_now
        key = (applied, tip)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        verdict = self._verify(repo, applied, tip)
        if verdict.final:
            self._last = (key, verdict)
        if len(self._good) + len(self._bad) > 4 * self.policy.max_commits:
            self._good.clear()
            self._bad.clear()
        return verdict

    def _keys_stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        """What the allowed-key files look like now (inode, size, mtime), to notice an edit or a replacement."""
        paths: list[Path] = []
        for path in (self.policy.allowed_signers, self.policy.gpg_keyring):
            if path is not None:
                paths += [path / "pubring.kbx", path / "pubring.gpg"] if path.is_dir() else [path]
        stamps: list[tuple[int, int, int] | None] = []
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                stamps.append(None)
                continue
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamps)

    def _verify(self, repo: pygit2.Repository, applied: str | None, tip: str) -> Verdict:
        import pygit2

        since = self.policy.since
        trusted: list[str] = []
        if applied is not None:
            if isinstance(repo.get(applied), pygit2.Commit):
                _keep(repo, applied)
                trusted.append(applied)
            elif since is None:
                return Verdict(
                    ok=False,
                    message=f"the last applied commit {applied[:12]} is no longer in the mirror, so gitopsd cannot "
                    "tell which commits are new; set the verify `since` option to a commit you trust",
                )
        if since is not None:
            if not isinstance(repo.get(since), pygit2.Commit):
                return Verdict(ok=False, message=f"the verify `since` commit {since[:12]} is not in this repository")
            trusted.append(since)
        limit = self.policy.max_commits
        commits = new_commits(repo, tip, trusted, limit) if trusted else [tip]
        if len(commits) > limit:
            return Verdict(
                ok=False,
                checked=0,
                message=f"more than {limit} new commits after {trusted[0][:12]}; none was checked. Set the verify "
                "`since` option to a commit you have reviewed, or raise verify `max_commits`",
            )
        problems: list[tuple[str, Problem]] = []
        checked = 0
        for commit in commits:
            if commit in self._good:
                continue
            problem = self._bad.get(commit)
            if problem is None:
                checked += 1
                obj = repo.get(commit)
                assert isinstance(obj, pygit2.Commit)
                signature, payload = obj.gpg_signature
                problem = self.checker.problem(signature, payload)
                if problem is None:
                    self._good.add(commit)
                    continue
                if problem.final:
                    self._bad[commit] = problem
            problems.append((commit, problem))
            if len(problems) >= MAX_LISTED:
                break
        if not problems:
            return Verdict(ok=True, checked=checked)
        more = " (checking stopped there)" if len(problems) >= MAX_LISTED else ""
        if trusted:
            head = f"{len(problems)} of the {len(commits)} commit(s) after {trusted[0][:12]} lack"
        else:
            head = "the tip lacks"
        head += f" a good signature from an allowed key{more}:"
        lines = [f"  {describe(repo, commit)}: {problem.why}" for commit, problem in problems]
        return Verdict(
            ok=False,
            checked=checked,
            message="\n".join([head, *lines]),
            final=all(problem.final for _, problem in problems),
        )


def _keep(repo: pygit2.Repository, commit: str) -> None:
    """Point `refs/gitopsd/applied` at `commit`, so no gc removes it after a force-push (fetch never prunes it)."""
    import pygit2

    try:
        current = repo.references.get(APPLIED_REF)
        if current is None or str(current.target) != commit:
            repo.references.create(APPLIED_REF, pygit2.Oid(hex=commit), force=True)
    except (pygit2.GitError, OSError):
        pass  # only a safeguard: the range is still measured from the applied commit while it exists
