"""The active/standby lease: its pure rules exhaustively, its files on a real filesystem (racing claimers in
threads and processes), and the elector that holds or watches it, with clocks the test moves."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest

from gitopsd.daemon.config import load_config
from gitopsd.daemon.lease import (
    Holder,
    LeaseRecord,
    Sighting,
    Timing,
    acts_until,
    claim,
    expired,
    released,
    renewed,
    sighted,
)
from gitopsd.daemon.leasefile import KEEP_CLAIMS, LeaseDir
from gitopsd.daemon.standby import ACTIVE, STANDBY, Elector
from gitopsd.errors import LeaseLost, PermanentError, TransientError
from gitopsd.reconcile.statusview import lease_line, read_lease
from tests.conftest import GitRepo, gitopsd

TIMING = Timing(ttl=30, renew=10, max_clock_skew=5)


def holder(host: str = "login1", pid: int = 100) -> Holder:
    return Holder(host=host, pid=pid, boot_id="b", started_at=0.0, nonce=f"{host}-{pid}")


# -- the pure rules ------------------------------------------------------------------------------------------


def test_timing_must_let_a_holder_renew_twice_within_what_it_may_act_under() -> None:
    assert TIMING.problem() is None
    assert TIMING.take_over_bound == 45
    assert "2 x renew + max_clock_skew" in (Timing(ttl=20, renew=10, max_clock_skew=1).problem() or "")
    assert Timing(ttl=0, renew=1, max_clock_skew=0).problem()


def test_a_record_survives_its_json_and_a_forged_one_is_refused() -> None:
    record = renewed(claim(3, holder(), wall=100.0, timing=TIMING, repository="r"), wall=110.0, timing=TIMING)
    assert LeaseRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert (record.beat, record.expires_at) == (1, 140.0)
    forged: list[object] = [[], {"generation": "3"}, {**record.to_json(), "generation": True},
                            {**record.to_json(), "holder": 1}]  # fmt: skip
    for bad in forged:
        with pytest.raises(ValueError, match=r"not a JSON object|missing or wrong field|not an integer"):
            LeaseRecord.from_json(bad)


def test_a_sighting_keeps_its_time_while_the_record_does_not_change() -> None:
    first = claim(1, holder(), wall=0.0, timing=TIMING)
    seen = sighted(None, first, local=5.0)
    assert sighted(seen, first, local=50.0) is seen
    assert sighted(seen, renewed(first, wall=10.0, timing=TIMING), local=60.0).since == 60.0
    assert sighted(seen, None, local=70.0) == Sighting(record=None, since=70.0)


def test_what_makes_a_lease_expired() -> None:
    record = claim(1, holder(), wall=1000.0, timing=TIMING)  # expires at 1030 (holder's wall clock)
    seen = Sighting(record=record, since=0.0)
    assert expired(Sighting(record=None, since=0.0), local=0.0, wall=0.0, timing=TIMING) == "no daemon holds the lease"
    assert expired(seen, local=35.0, wall=1000.0, timing=TIMING) is None, "exactly ttl + skew is not yet over"
    assert "not renewed for 36 s" in (expired(seen, local=36.0, wall=1000.0, timing=TIMING) or "")
    assert expired(seen, local=0.0, wall=1035.0, timing=TIMING) is None, "a clock 5 s ahead is allowed for"
    assert "expired 6 s ago" in (expired(seen, local=0.0, wall=1036.0, timing=TIMING) or "")
    gone = released(record, wall=1001.0)
    assert "released" in (expired(Sighting(record=gone, since=0.0), local=0.0, wall=0.0, timing=TIMING) or "")


GRID = [TIMING, Timing(ttl=4, renew=1, max_clock_skew=1), Timing(ttl=9, renew=2, max_clock_skew=0)]


@pytest.mark.parametrize("timing", GRID)
def test_no_standby_may_take_over_while_the_holder_may_still_act(timing: Timing) -> None:
    """Every combination on a grid: when the holder's renewal started and was written, when a standby first saw
    it, both hosts' clock offsets (wall clocks within max_clock_skew; boot clocks unrelated) and when the
    standby looks. Whenever the standby would take over, the holder's time to act is over."""
    steps = [0.0, 0.5, 1.0, 3.0]
    skews = sorted({-timing.max_clock_skew, 0.0, timing.max_clock_skew})
    for written, seen_after, holder_wall, standby_wall, boot in itertools.product(
        steps, steps, skews, skews, [0.0, 1e6]
    ):
        start = 0.0  # the holder starts renewing at real time 0
        record = renewed(claim(1, holder(), wall=0, timing=timing), wall=start + holder_wall, timing=timing)
        stops = acts_until(start, timing)  # the holder's boot clock is real time here
        sighting = Sighting(record=record, since=start + written + seen_after + boot)
        t = start + written + seen_after
        while t < stops + 2 * timing.ttl:
            if expired(sighting, local=t + boot, wall=t + standby_wall, timing=timing) is not None:
                assert t > stops, (written, seen_after, holder_wall, standby_wall, t, stops)
                break
            t += 0.25
        else:
            raise AssertionError("the standby never took over")


def test_a_holder_acts_until_ttl_less_the_skew_after_its_renewal_started() -> None:
    assert acts_until(100.0, TIMING) == 125.0


# -- the files -------------------------------------------------------------------------------------------------


def test_claim_read_renew_and_the_loser_of_a_generation(tmp_path: Path) -> None:
    lease = LeaseDir(tmp_path / "demo")
    assert (lease.newest(), lease.read()) == (0, None)
    mine = claim(1, holder(), wall=10.0, timing=TIMING)
    assert lease.claim(mine) is True
    assert lease.claim(claim(1, holder("login2"), wall=11.0, timing=TIMING)) is False
    assert (lease.newest(), lease.read()) == (1, mine)
    lease.write(renewed(mine, wall=20.0, timing=TIMING))
    assert lease.read() == renewed(mine, wall=20.0, timing=TIMING)
    assert sorted(p.name for p in lease.path.iterdir()) == ["claim.1", "lease"], "no temporary file left"


def test_a_claim_whose_claimer_died_before_writing_the_lease_is_the_current_record(tmp_path: Path) -> None:
    lease = LeaseDir(tmp_path / "demo")
    lease.claim(claim(1, holder(), wall=10.0, timing=TIMING))
    second = claim(2, holder("login2"), wall=50.0, timing=TIMING)
    (lease.path / "claim.2").write_text(json.dumps(second.to_json()))  # as if it died right after the link
    assert lease.read() == second


def test_an_unreadable_or_linked_record_is_an_error_never_an_absent_lease(tmp_path: Path) -> None:
    lease = LeaseDir(tmp_path / "demo")
    lease.claim(claim(1, holder(), wall=10.0, timing=TIMING))
    (lease.path / "lease").write_text("{not json")
    (lease.path / "claim.1").write_text("[]")
    with pytest.raises(TransientError, match="not a gitopsd lease record"):
        lease.read()
    (lease.path / "lease").unlink()
    (lease.path / "lease").symlink_to(tmp_path / "elsewhere")
    (lease.path / "claim.1").write_text(json.dumps(claim(1, holder(), wall=1.0, timing=TIMING).to_json()))
    (tmp_path / "elsewhere").write_text(json.dumps(claim(1, holder("evil"), wall=1.0, timing=TIMING).to_json()))
    with pytest.raises(TransientError, match="symbolic link"):
        lease.read()


def test_old_claims_are_pruned_keeping_the_last_few(tmp_path: Path) -> None:
    lease = LeaseDir(tmp_path / "demo")
    for generation in range(1, 12):
        lease.claim(claim(generation, holder(), wall=float(generation), timing=TIMING))
    lease.prune(11)
    kept = sorted(int(p.name.split(".")[1]) for p in lease.path.glob("claim.*"))
    assert kept == list(range(11 - KEEP_CLAIMS + 1, 12)) and lease.newest() == 11


def test_racing_threads_one_claim_wins(tmp_path: Path) -> None:
    lease = LeaseDir(tmp_path / "demo")
    barrier = threading.Barrier(16)
    wins: list[str] = []

    def race(i: int) -> None:
        barrier.wait()
        if lease.claim(claim(1, holder(f"h{i}"), wall=0.0, timing=TIMING)):
            wins.append(f"h{i}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    record = lease.read()
    assert record is not None and record.holder.host == wins[0]


def _claim_in_process(path: str, host: str, start: Any, out: Any) -> None:
    start.wait()
    out.put((host, LeaseDir(Path(path)).claim(claim(1, holder(host), wall=0.0, timing=TIMING))))


def test_racing_processes_one_claim_wins(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    start, out = context.Event(), context.Queue()
    processes = [context.Process(target=_claim_in_process, args=(str(tmp_path / "demo"), f"p{i}", start, out))
                 for i in range(8)]  # fmt: skip
    for process in processes:
        process.start()
    start.set()
    results = [out.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(10)
    winners = [host for host, won in results if won]
    assert len(winners) == 1
    record = LeaseDir(tmp_path / "demo").read()
    assert record is not None and record.holder.host == winners[0]


# -- the elector -------------------------------------------------------------------------------------------------


class Clocks:
    """Each host's boot clock and wall clock, moved by the test."""

    def __init__(self, wall_offset: float = 0.0) -> None:
        self.now = 1000.0
        self.wall_offset = wall_offset

    def local(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now + self.wall_offset


def elector(tmp_path: Path, host: str, clocks: Clocks, timing: Timing = TIMING) -> tuple[Elector, list[str]]:
    became: list[str] = []
    (tmp_path / "leases").mkdir(exist_ok=True)  # the operator creates lease_dir on the shared filesystem
    made = Elector("demo", LeaseDir(tmp_path / "leases" / "demo"), timing, status_path=tmp_path / host / "lease.json",
                   holder=holder(host), clock=clocks.local, wall=clocks.wall,
                   on_active=lambda: became.append(host))  # fmt: skip
    return made, became


def test_the_first_daemon_becomes_active_the_second_stands_by_and_status_says_who(tmp_path: Path) -> None:
    clocks = Clocks()
    one, became = elector(tmp_path, "login1", clocks)
    two, _ = elector(tmp_path, "login2", clocks)
    one.step()
    two.step()
    assert (one.role.role, one.generation, became) == (ACTIVE, 1, ["login1"])
    one.fence()
    assert (two.role.role, two.generation) == (STANDBY, None)
    with pytest.raises(LeaseLost, match="standing by"):
        two.fence()
    seen = read_lease(tmp_path / "login2")
    assert seen is not None
    assert lease_line(seen, now=clocks.wall() + 3) == "standby: login1 is active (lease generation 1, renewed 3 s ago)"
    mine = read_lease(tmp_path / "login1")
    assert mine is not None and lease_line(mine, now=clocks.wall()).startswith("active: this daemon on login1")


def test_a_renewing_holder_keeps_the_lease_and_a_dead_one_loses_it_within_the_bound(tmp_path: Path) -> None:
    clocks = Clocks()
    one, _ = elector(tmp_path, "login1", clocks)
    two, became = elector(tmp_path, "login2", clocks)
    one.step()
    two.step()
    for _ in range(20):  # 200 s of heartbeats: the standby never takes over
        clocks.now += TIMING.renew
        one.step()
        two.step()
        one.fence()
    assert two.role.role == STANDBY and became == []
    died_at = clocks.now  # login1's last renewal; it is killed now
    while two.role.role != ACTIVE:
        clocks.now += TIMING.renew
        two.step()
    assert clocks.now - died_at <= TIMING.take_over_bound
    assert (two.generation, became) == (2, ["login2"])
    assert "was not renewed for" in two.role.why


def test_a_holder_paused_past_its_lease_wakes_up_unable_to_act_and_stands_by(tmp_path: Path) -> None:
    clocks = Clocks()
    one, _ = elector(tmp_path, "login1", clocks)
    two, _ = elector(tmp_path, "login2", clocks)
    one.step()
    two.step()
    clocks.now += TIMING.ttl  # SIGSTOP: login1's threads did nothing for 30 s; its boot clock went on
    with pytest.raises(LeaseLost, match="lapsed"):
        one.fence()
    while two.role.role != ACTIVE:
        clocks.now += TIMING.renew
        two.step()
    one.step()  # its heartbeat wakes up too
    assert (one.role.role, one.generation) == (STANDBY, None)
    with pytest.raises(LeaseLost):
        one.fence()
    assert two.generation == 2


def test_a_standby_started_long_after_the_holder_died_takes_over_by_the_wall_clock(tmp_path: Path) -> None:
    clocks = Clocks()
    one, _ = elector(tmp_path, "login1", clocks)
    one.step()
    clocks.now += 3600  # login1 died an hour ago; login2 starts now
    two, became = elector(tmp_path, "login2", clocks)
    two.step()
    assert became == ["login2"] and "expired" in two.role.why


def test_a_clock_ahead_by_the_allowed_skew_does_not_take_over_early(tmp_path: Path) -> None:
    clocks, ahead = Clocks(), Clocks(wall_offset=TIMING.max_clock_skew)
    one, _ = elector(tmp_path, "login1", clocks)
    one.step()
    clocks.now += TIMING.ttl - TIMING.max_clock_skew - 0.5  # login1 may still act (it missed its renewals)
    ahead.now = clocks.now
    two, became = elector(tmp_path, "login2", ahead)  # a fresh standby whose wall clock is 5 s ahead
    two.step()
    one.fence()
    assert became == []


def test_a_clean_stop_releases_the_lease_and_the_standby_takes_over_at_once(tmp_path: Path) -> None:
    clocks = Clocks()
    one, _ = elector(tmp_path, "login1", clocks)
    two, became = elector(tmp_path, "login2", clocks)
    one.step()
    two.step()
    one.stop()
    two.step()
    assert became == ["login2"] and "released" in two.role.why


def test_two_standbys_racing_for_an_expired_lease_one_wins(tmp_path: Path) -> None:
    clocks = Clocks()
    first, _ = elector(tmp_path, "login1", clocks)
    first.step()
    clocks.now += 3600
    contenders = [elector(tmp_path, f"login{i}", clocks) for i in range(2, 10)]
    barrier = threading.Barrier(len(contenders))

    def race(one: Elector) -> None:
        barrier.wait()
        one.step()

    threads = [threading.Thread(target=race, args=(one,)) for one, _ in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    active = [one for one, _ in contenders if one.role.role == ACTIVE]
    assert len(active) == 1 and active[0].generation == 2
    assert LeaseDir(tmp_path / "leases" / "demo").newest() == 2


def test_an_unreachable_lease_directory_keeps_a_holder_acting_only_until_its_lease_lapses(tmp_path: Path) -> None:
    clocks = Clocks()
    one, _ = elector(tmp_path, "login1", clocks)
    one.step()
    lease_dir = tmp_path / "leases" / "demo"
    lease_dir.rename(tmp_path / "leases" / "gone")
    lease_dir.write_text("not a directory: every read and write fails")
    clocks.now += TIMING.renew
    one.step()
    one.fence()  # still within its lease
    clocks.now += TIMING.ttl
    with pytest.raises(LeaseLost, match="lapsed"):
        one.fence()
    one.step()
    assert one.role.role == STANDBY


def test_a_missing_lease_dir_is_never_created_and_the_daemon_stands_by_saying_why(tmp_path: Path) -> None:
    clocks = Clocks()
    lonely = Elector("demo", LeaseDir(tmp_path / "unmounted" / "demo"), TIMING, status_path=tmp_path / "lease.json",
                     holder=holder(), clock=clocks.local, wall=clocks.wall)  # fmt: skip
    lonely.step()
    assert lonely.role.role == STANDBY and not (tmp_path / "unmounted").exists()
    with pytest.raises(LeaseLost):
        lonely.fence()
    seen = read_lease(tmp_path)
    assert seen is not None and "is the shared filesystem mounted?" in lease_line(seen, now=clocks.wall())


def test_the_standby_settings_are_checked_when_the_configuration_is_read(tmp_path: Path) -> None:
    config = tmp_path / "gitopsd.toml"
    config.write_text('[standby]\nlease_dir = "/shared/gitopsd/leases"\n')
    standby = load_config(config).standby
    assert standby is not None and standby.timing() == Timing(ttl=30, renew=10, max_clock_skew=5)
    config.write_text('[standby]\nlease_dir = "/shared/leases"\nttl = "20s"\nrenew = "10s"\n')
    with pytest.raises(PermanentError, match=r"standby: .*ttl \(20 s\) must be at least 2 x renew \+ max_clock_skew"):
        load_config(config)
    config.write_text('[standby]\nlease_dir = "relative/leases"\n')
    with pytest.raises(PermanentError, match=r"standby\.lease_dir"):
        load_config(config)
    config.write_text("")
    assert load_config(config).standby is None, "unset: no lease, every daemon acts"


def test_a_command_line_reconcile_is_refused_where_daemons_share_a_lease(tmp_path: Path, demo_repo: GitRepo) -> None:
    config = tmp_path / "gitopsd.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[[repositories]]\nname = "demo"\nurl = "{demo_repo.path}"\n'
                      f'[standby]\nlease_dir = "{tmp_path}"\n')  # fmt: skip
    done = gitopsd(tmp_path / "state" / "demo", "--config", str(config), "reconcile", "--repo", str(demo_repo.path),
                   check=False)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "served by daemons that share a lease ([standby]" in done.stderr and "gitopsd trigger" in done.stderr
    assert not (tmp_path / "state" / "demo" / "state.db").exists()
