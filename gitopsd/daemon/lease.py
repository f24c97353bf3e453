"""The rules of the active/standby lease, pure: who holds it, when it has expired, how long a holder may act.

Two `gitopsd run` on two login nodes with the same configuration would both submit every training. With
`[standby]` configured, each repository has one lease in a directory all login nodes share (`leasefile` is the
file protocol); its holder is the active daemon, the others stand by. Nothing here does I/O or reads a clock:
every time is an argument, so each rule is tested exhaustively.

Two clocks, kept apart on purpose:

- `local`: this host's CLOCK_BOOTTIME. It never jumps, and it keeps counting while the process is stopped
  (SIGSTOP) or the host is suspended. A holder may act until `ttl - max_clock_skew` after it *started* its last
  successful renewal, by this clock; a daemon that was paused past that wakes up with no lease to act under.
- `wall`: time.time(), which another host can compare only within the clock skew between hosts.

A standby takes over when the record it reads (1) has not changed for `ttl + max_clock_skew` by its own local
clock (no assumption about other clocks), or (2) says, by the holder's wall clock, that it expired more than
`max_clock_skew` ago (that needs the hosts' clocks to agree within max_clock_skew; it spares a freshly started
standby the wait for rule 1 when the lease died long ago), or (3) was released by its holder on a clean stop.
The holder stops acting `max_clock_skew` before its `ttl` runs out, so there is twice the skew of slack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Timing:
    """The operator's `[standby]` times, in seconds."""

    ttl: float
    renew: float
    max_clock_skew: float

    def problem(self) -> str | None:
        """Why these times cannot keep a lease (None when they can): a holder must renew at least twice within
        what it may act under, so one slow renewal does not cost it the lease."""
        if min(self.ttl, self.renew) <= 0 or self.max_clock_skew < 0:
            return "ttl and renew must be positive, max_clock_skew not negative"
        if 2 * self.renew + self.max_clock_skew > self.ttl:
            return (f"ttl ({self.ttl:g} s) must be at least 2 x renew + max_clock_skew "
                    f"({2 * self.renew + self.max_clock_skew:g} s)")  # fmt: skip
        return None

    @property
    def take_over_bound(self) -> float:
        """The longest a standby (already watching) waits after the holder's last renewal: ttl + skew + a poll."""
        return self.ttl + self.max_clock_skew + self.renew


@dataclass(frozen=True, kw_only=True)
class Holder:
    """Who holds (or claims) a lease: a daemon process on a host."""

    host: str
    pid: int
    boot_id: str
    started_at: float
    nonce: str

    @property
    def shown(self) -> str:
        return f"{self.host} (pid {self.pid})"


@dataclass(frozen=True, kw_only=True)
class LeaseRecord:
    """One state of a lease, as written to the shared directory. `beat` counts renewals within a generation."""

    generation: int
    holder: Holder
    renewed_at: float
    expires_at: float
    beat: int = 0
    released: bool = False
    repository: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation, "holder": asdict(self.holder), "renewed_at": self.renewed_at,
            "expires_at": self.expires_at, "beat": self.beat, "released": self.released,
            "repository": self.repository,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: object) -> LeaseRecord:
        """A record read from the shared directory; ValueError when it is not one."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            holder = data["holder"]
            return cls(
                generation=_int(data["generation"]),
                holder=Holder(host=str(holder["host"]), pid=_int(holder["pid"]), boot_id=str(holder["boot_id"]),
                              started_at=float(holder["started_at"]), nonce=str(holder["nonce"])),
                renewed_at=float(data["renewed_at"]),
                expires_at=float(data["expires_at"]),
                beat=_int(data.get("beat", 0)),
                released=data.get("released") is True,
                repository=str(data.get("repository", "")),
            )  # fmt: skip
        except (KeyError, TypeError) as exc:
            raise ValueError(f"missing or wrong field: {exc}") from None


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value


def claim(generation: int, holder: Holder, *, wall: float, timing: Timing, repository: str = "") -> LeaseRecord:
    """The record of a new generation, claimed now."""
    return LeaseRecord(generation=generation, holder=holder, renewed_at=wall, expires_at=wall + timing.ttl,
                       repository=repository)  # fmt: skip


def renewed(record: LeaseRecord, *, wall: float, timing: Timing) -> LeaseRecord:
    return replace(record, renewed_at=wall, expires_at=wall + timing.ttl, beat=record.beat + 1)


def released(record: LeaseRecord, *, wall: float) -> LeaseRecord:
    """What a holder writes on a clean stop: a standby may take over at once."""
    return replace(record, renewed_at=wall, expires_at=wall, beat=record.beat + 1, released=True)


def acts_until(renewal_started: float, timing: Timing) -> float:
    """Until when (local clock) a holder may act after a renewal that started at `renewal_started`."""
    return renewal_started + timing.ttl - timing.max_clock_skew


@dataclass(frozen=True, kw_only=True)
class Sighting:
    """What a standby has seen of a lease: the record, and since when (local clock) it has not changed."""

    record: LeaseRecord | None
    since: float


def sighted(previous: Sighting | None, record: LeaseRecord | None, *, local: float) -> Sighting:
    """The sighting after reading `record` at `local`: the same record keeps its first sighting's time."""
    if previous is not None and previous.record == record:
        return previous
    return Sighting(record=record, since=local)


def expired(sighting: Sighting, *, local: float, wall: float, timing: Timing) -> str | None:
    """Why the lease may be taken over now (None: its holder may still be acting). See the module docstring."""
    record = sighting.record
    if record is None:
        return "no daemon holds the lease"
    if record.released:
        return f"{record.holder.shown} released the lease"
    if local - sighting.since > timing.ttl + timing.max_clock_skew:
        return (f"the lease of {record.holder.shown} was not renewed for {local - sighting.since:.0f} s "
                f"(ttl {timing.ttl:g} s + max_clock_skew {timing.max_clock_skew:g} s)")  # fmt: skip
    if wall > record.expires_at + timing.max_clock_skew:
        return (f"the lease of {record.holder.shown} expired {wall - record.expires_at:.0f} s ago "
                f"(last renewed at {record.renewed_at:.0f})")  # fmt: skip
    return None
