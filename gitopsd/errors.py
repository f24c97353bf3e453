"""The error kinds that cross layers.

Two kinds matter to the reconciler: a transient error is retried with capped backoff (the model stays
Reconciling), a permanent one stalls the model until a new commit changes it. Anything else is a bug or an
unexpected outage and is treated as transient. Spec errors carry the file, line and field they are about.
"""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(frozen=True, kw_only=True)
class SpecProblem:
    """One thing wrong with a spec file, located as precisely as we can."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class SpecError(PermanentError):
    """One or more spec files are invalid; the whole commit is rejected."""

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
