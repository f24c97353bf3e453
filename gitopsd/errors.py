"""The error kinds that cross layers, and how a failure is retried.

Two kinds matter to the reconciler: a transient error is retried with capped exponential backoff and jitter
(the model stays Reconciling, and `status` shows the attempt and the next retry), a permanent one stalls the
model or run until its input changes (a new commit, a changed operator configuration). `is_permanent` is the
one place that decides which an exception is; `retry_delay` the one backoff schedule. Anything not known to
be permanent is a bug or an unexpected outage and is treated as transient. Spec errors carry the file, line
and field they are about.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import random
    from collections.abc import Iterable

#: Characters that would break or forge a line of a log, a terminal or a status page, and lone surrogates,
#: which no UTF-8 log, database or terminal can hold (a file name that is not UTF-8 decodes to them).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escaped(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # a byte that was not UTF-8 (os.fsdecode's surrogateescape): show the byte
        return f"\\x{ord(char) - 0xDC00:02x}"
    return repr(char)[1:-1]


def printable(text: str) -> str:
    """`text` with every control character written as its Python escape (a newline as \\n), and every byte of
    a name that is not UTF-8 as \\xNN."""
    return _UNPRINTABLE.sub(lambda m: _escaped(m.group()), text)


def printable_lines(text: str, *, indent: str = "") -> str:
    """`text` as lines for a terminal or a log: each line `printable`, every one after the first prefixed with
    `indent` (so that none passes for a line of its own)."""
    return f"\n{indent}".join(printable(line) for line in text.split("\n"))


class GitopsdError(Exception):
    """Base class of every error gitopsd raises on purpose."""


class TransientError(GitopsdError):
    """Worth retrying later: a backend or source that is down, a lock, a network hiccup."""


class PermanentError(GitopsdError):
    """Retrying with the same input cannot help: a bad spec, a refused submission."""


class BackendUnavailable(TransientError):
    """A backend cannot be reached or used right now (daemon down, library missing)."""


class SourceUnavailable(TransientError):
    """The Git source cannot be fetched right now."""


class IntegrityError(PermanentError):
    """Stored bytes do not match their recorded digest."""


class LeaseLost(TransientError):
    """This daemon no longer holds its repository's lease (`[standby]`): it must stop acting at once, before
    any submit, cancel, registration or alias move, and leave the repository to the active daemon."""


@dataclass(frozen=True, kw_only=True)
class SpecProblem:
    """One thing wrong with a spec file, located as precisely as we can."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        """One line, whatever the file, field or message hold: a hostile spec cannot forge a log line."""
        where = f"{printable(self.file)}:{self.line}" if self.line else printable(self.file)
        field = f" {printable(self.field)}:" if self.field else ""
        return f"{where}:{field} {printable(self.message)}"


#: Problems one SpecError lists. A hostile commit can hold millions (a thousand files, each with a mapping of
#: ten thousand wrong values); each is kept in memory, logged, and stored in the source row that `status` shows.
MAX_PROBLEMS = 500


@dataclass(frozen=True, kw_only=True)
class _Unshown(SpecProblem):
    """The line that stands for the problems a SpecError does not list (so that one built from another's
    problems counts them again rather than hiding its count)."""

    problems: int
    files: int


def problem_count(problems: Iterable[SpecProblem]) -> int:
    """How many problems a SpecError's list stands for: its line that counts the unlisted ones counts them."""
    return sum(p.problems if isinstance(p, _Unshown) else 1 for p in problems)


class SpecError(PermanentError):
    """One or more spec files are invalid; the whole commit is rejected. At most `MAX_PROBLEMS` problems are
    listed, then one line that counts the others; `total` counts them all."""

    def __init__(self, problems: list[SpecProblem]) -> None:
        shown = [p for p in problems if not isinstance(p, _Unshown)]
        unshown = [p for p in problems if isinstance(p, _Unshown)]
        hidden, files = sum(p.problems for p in unshown), sum(p.files for p in unshown)
        first = unshown[0].file if unshown else ""
        if len(shown) > MAX_PROBLEMS:
            over, shown = shown[MAX_PROBLEMS:], shown[:MAX_PROBLEMS]
            hidden, files, first = hidden + len(over), files + len({p.file for p in over}), over[0].file
        if hidden:
            message = f"{hidden} more problem(s) in {files} file(s), from this one on, are not shown; fix those above"
            message += " first"
            shown.append(_Unshown(file=first, line=None, field="", message=message, problems=hidden, files=files))
        self.problems = shown
        super().__init__("\n".join(str(p) for p in shown))

    @property
    def total(self) -> int:
        """How many problems the commit has, listed or counted."""
        return problem_count(self.problems)


#: OS errors that retrying cannot mend: the operator must change a permission, a path or a mount.
_PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ELOOP,
                               errno.ENAMETOOLONG, errno.EXDEV})  # fmt: skip

#: Retry schedule: the first retry after BASE seconds, doubling to at most CAP.
RETRY_BASE_S = 5.0
RETRY_CAP_S = 600.0


def is_permanent(exc: BaseException) -> bool:
    """Whether retrying the same work with the same input cannot help (see the module docstring)."""
    if isinstance(exc, PermanentError):
        return True
    if isinstance(exc, TransientError):
        return False
    if isinstance(exc, OSError):
        return exc.errno in _PERMANENT_ERRNOS
    return isinstance(exc, UnicodeError | OverflowError)


def retry_delay(attempt: int, *, base_s: float = RETRY_BASE_S, cap_s: float = RETRY_CAP_S,
                rand: random.Random | None = None) -> float:  # fmt: skip
    """Seconds to wait before retry number `attempt` (1 for the first): capped exponential, with "equal
    jitter" (between half and all of the step), so that many failures after one outage do not retry in step."""
    import random  # here, not at the top: the command line imports this module on every start, and rarely retries

    step = min(cap_s, base_s * 2.0 ** min(max(attempt, 1) - 1, 64))
    return step * (0.5 + 0.5 * (rand or random).random())
