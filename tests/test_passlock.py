"""One applying pass at a time per state directory: the lock itself, two `gitopsd reconcile` at once, and the
daemon beside a command's pass."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gitopsd.errors import PermanentError
from gitopsd.reconcile.passlock import LOCK_NAME, PassBusy, PassLock
from gitopsd.reconcile.reconciler import Reconciler
from tests.conftest import GIT_ENV, GitRepo
from tests.test_daemon import start_daemon


def test_a_second_holder_is_told_who_holds_the_lock_or_waits_until_it_is_free(tmp_path: Path) -> None:
    first, second = PassLock(tmp_path, "daemon"), PassLock(tmp_path, "reconcile")
    told: list[str] = []
    entered = threading.Event()

    def waiting_pass() -> None:
        with second.held(wait=told.append):
            entered.set()

    with first.held():
        busy = rf"a pass of pid {os.getpid()} \(gitopsd run\) is in progress"
        with pytest.raises(PassBusy, match=busy), second.held():
            pass
        waiter = threading.Thread(target=waiting_pass)
        waiter.start()
        time.sleep(0.3)  # it has tried several times by now
        assert not entered.is_set()
        assert told == [f"pid {os.getpid()} (gitopsd run)"]  # said once, however long it waits
    waiter.join(5)
    assert entered.is_set()
    assert told == [f"pid {os.getpid()} (gitopsd run)"]
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()} reconcile\n"  # the last holder's


def test_a_waiter_gives_up_at_its_deadline_and_says_how_long_it_waited(tmp_path: Path) -> None:
    told: list[str] = []
    with PassLock(tmp_path, "daemon").held():
        start = time.monotonic()
        with (
            pytest.raises(PassBusy, match=r"in progress in this state directory; gave up waiting for it after 0 s"),
            PassLock(tmp_path, "reconcile").held(wait=told.append, until=start + 0.4),
        ):
            pass
        assert 0.4 <= time.monotonic() - start < 5, "it gave up at its deadline"
    assert len(told) == 1


def test_a_holder_killed_mid_pass_leaves_no_lock_behind(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from gitopsd.reconcile.passlock import PassLock\n"
        "with PassLock(Path(sys.argv[1]), 'reconcile').held():\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    with pytest.raises(PassBusy, match=rf"pid {holder.pid} \(gitopsd reconcile\)"), PassLock(tmp_path, "daemon").held():
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with PassLock(tmp_path, "daemon").held():  # at once: the kernel dropped it with the process
        pass


def test_a_filesystem_without_flock_is_named_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lustre mounted with -o noflock answers ENOSYS: every pass would fail, so the message must say why and
    what to do (the one thing faked here is the filesystem's answer)."""

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr("gitopsd.reconcile.passlock.fcntl.flock", no_flock)
    said = r"cannot lock .*pass\.lock: Function not implemented; .*-o localflock"
    with pytest.raises(PermanentError, match=said), PassLock(tmp_path, "reconcile").held():
        pass


def test_a_lock_file_that_cannot_be_opened_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).symlink_to(tmp_path / "elsewhere")  # never followed
    with pytest.raises(PermanentError, match=r"cannot open .*pass\.lock: "), PassLock(tmp_path, "reconcile").held():
        pass
    assert not (tmp_path / "elsewhere").exists()


def _gitopsd(state: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPSD_")} | GIT_ENV
    return subprocess.Popen([sys.executable, "-m", "gitopsd", "--state-dir", str(state), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _stderr_until(command: subprocess.Popen[str], text: str) -> str:
    """What `command` wrote to stderr up to the first line that holds `text`, or up to its end."""
    assert command.stderr is not None
    read = ""
    while line := command.stderr.readline():
        read += line
        if text in line:
            break
    return read


def _runs(state: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True) as conn:
        return list(conn.execute("SELECT run_key, id FROM runs ORDER BY created_at"))


def test_reconciles_started_together_after_a_commit_train_it_once(demo_repo: GitRepo, tmp_path: Path) -> None:
    """Each would find no run for the new run key; only one may act on that."""
    state = tmp_path / "state"
    settle = _gitopsd(state, "reconcile", "--wait", "--repo", str(demo_repo.path))
    assert settle.wait(120) == 0, settle.stderr.read() if settle.stderr else ""
    demo_repo.edit("models/blobs.yaml", 'SEED: "7"', 'SEED: "8"')
    demo_repo.commit("another seed: a new run key")
    before = len(_runs(state))
    lock = PassLock(state, "daemon")
    waiting = f"waiting for pid {os.getpid()} (gitopsd run), which is in a pass of {state}"
    with lock.held():  # as a daemon in a pass would: every command waits, then they go at once
        commands = [_gitopsd(state, "reconcile", "--once", "--timeout", "120") for _ in range(3)]
        # released only once each has said that it waits (a loaded machine may take seconds to start one)
        said = [_stderr_until(c, waiting) for c in commands]
        assert all(c.poll() is None for c in commands), "a command did not wait for the pass in progress"
    outputs = [c.communicate(timeout=120) for c in commands]
    assert [c.returncode for c in commands] == [0, 0, 0], outputs
    assert all(waiting in err for err in said), said
    runs = _runs(state)[before:]
    assert len(runs) == 1, runs  # the others found it in flight, or already trained


def test_a_reconcile_waits_no_longer_than_its_timeout(demo_repo: GitRepo, tmp_path: Path) -> None:
    """A pass that hangs (a stuck filesystem, a hung sbatch) must not hang every cron job and CI step behind it."""
    state = tmp_path / "state"
    state.mkdir()
    with PassLock(state, "daemon").held():
        start = time.monotonic()
        waiting = _gitopsd(state, "reconcile", "--once", "--timeout", "2", "--repo", str(demo_repo.path))
        out, err = waiting.communicate(timeout=60)
        took = time.monotonic() - start
    assert waiting.returncode == 1, (out, err)
    assert f"waiting for pid {os.getpid()} (gitopsd run), which is in a pass of {state}" in err
    assert (f"error: a pass of pid {os.getpid()} (gitopsd run) is in progress in this state directory; gave up "
            "waiting for it after 2 s") in err  # fmt: skip
    assert "Traceback" not in err
    assert took < 30
    assert not _runs(state), "nothing was submitted"


def test_a_training_started_by_a_pass_does_not_hold_the_lock(demo_repo: GitRepo, tmp_path: Path) -> None:
    """The lock ends with its pass, not with what the pass started: a training outlives it by hours."""
    demo_repo.edit("models/blobs.yaml", "command: python3 train.py", "command: sleep 60; python3 train.py")
    demo_repo.commit("a long training")
    state = tmp_path / "state"
    started = _gitopsd(state, "reconcile", "--once", "--repo", str(demo_repo.path))
    out, err = started.communicate(timeout=120)
    assert started.returncode == 0 and "1 run(s) in flight" in out, err
    with PassLock(state, "daemon").held():  # free at once, with the training running
        pass
    demo_repo.git("rm", "-q", "models/blobs.yaml")  # and the training is stopped, not left to sleep on
    demo_repo.commit("blobs goes")
    stopped = _gitopsd(state, "reconcile", "--wait", "--timeout", "60")
    assert stopped.wait(120) == 0


def test_the_daemon_holds_its_pass_until_a_command_has_finished_its_own(tmp_path: Path) -> None:
    with start_daemon(tmp_path) as daemon:
        lock = PassLock(daemon.state_dir / "demo", "reconcile")
        with lock.held():
            commit = daemon.push("a commit that arrives while a command is in a pass")
            time.sleep(3)  # the daemon tried about three times meanwhile
            assert daemon.source().get("fetched_commit") != commit
            waits = [line for line in daemon.log_lines() if "waits for it" in line.get("message", "")]
            assert len(waits) == 1, waits
            assert f"a pass of pid {os.getpid()} (gitopsd reconcile) is in progress" in waits[0]["message"]
        deadline = time.monotonic() + 10
        while daemon.source().get("fetched_commit") != commit:
            assert time.monotonic() < deadline, "the daemon never passed after the lock was free"
            time.sleep(0.05)
        assert daemon.source()["trigger"] == "push"  # the pass it held up, not a poll


def test_a_reconcile_or_plan_beside_the_daemon_needs_the_daemons_configuration(tmp_path: Path) -> None:
    """Without it, the command's pass would judge the daemon's commit by the built-in configuration."""
    with start_daemon(tmp_path) as daemon:
        repo_dir = daemon.state_dir / "demo"
        alone = _gitopsd(repo_dir, "reconcile", "--once")
        out, err = alone.communicate(timeout=60)
        assert alone.returncode == 1, (out, err)
        assert (f"error: {repo_dir} is a repository of the running daemon (pid {daemon.process.pid}), which "
                "reconciles it with its own configuration: use `gitopsd trigger`") in err  # fmt: skip
        assert "Traceback" not in err
        assert daemon.source()["error"] == ""  # nothing of the refused pass was recorded
        other = tmp_path / "other.toml"  # a configuration, but not one that names this state directory
        other.write_text(f'state_dir = "{tmp_path / "elsewhere"}"\n[[repositories]]\nname = "demo"\nurl = "x"\n')
        elsewhere = _gitopsd(repo_dir, "--config", str(other), "reconcile", "--once")
        out, err = elsewhere.communicate(timeout=60)
        assert elsewhere.returncode == 1 and "its own configuration" in err, (out, err)
        configured = _gitopsd(repo_dir, "--config", str(daemon.config), "reconcile", "--once")
        out, err = configured.communicate(timeout=60)
        assert configured.returncode == 0, (out, err)
        assert out.startswith(f"commit {daemon.source()['applied_commit'][:12]}: "), out  # the daemon's commit
        planned = _gitopsd(repo_dir, "plan")  # a plan judges by a configuration too
        out, err = planned.communicate(timeout=60)
        assert planned.returncode == 1, (out, err)
        assert (f"error: {repo_dir} is a repository of the running daemon (pid {daemon.process.pid}), which "
                "reconciles it with its own configuration: give `gitopsd plan` that configuration") in err  # fmt: skip
        planned = _gitopsd(repo_dir, "--config", str(daemon.config), "plan")
        out, err = planned.communicate(timeout=60)
        assert planned.returncode == 0, (out, err)
        assert "(1 unchanged model(s) not shown)" in out, out


class _HeldUp:
    """A reconciler whose passes another process holds up until `free` is set; then it passes."""

    def __init__(self) -> None:
        self.free = threading.Event()
        self.triggers: list[str] = []

    def reconcile(self, trigger: str = "cli") -> object:
        self.triggers.append(trigger)
        if not self.free.is_set():
            raise PassBusy("pid 4242 (gitopsd reconcile)")
        return type("Result", (), {"active": 0})()

    def retry_stalled(self) -> int:
        return 0

    def close(self) -> None:
        pass


def test_a_long_hold_up_is_said_again_every_while_and_never_counted_as_a_pass(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from gitopsd.daemon import triggers

    monkeypatch.setattr(triggers, "BUSY_RETRY_S", 0.05)
    monkeypatch.setattr(triggers, "HELD_UP_SAY_S", 0.5)
    held, reports = _HeldUp(), list[triggers.PassReport]()
    worker = triggers.Worker("demo", lambda: held, on_pass=reports.append)
    with caplog.at_level("INFO", logger="gitopsd"):
        worker.start()
        time.sleep(1.3)
        assert not reports and not worker.first_pass.is_set()
        held.free.set()
        assert worker.first_pass.wait(5)
        worker.stop(5)
    said = [r for r in caplog.records if "pid 4242 (gitopsd reconcile)" in r.getMessage()]
    assert said[0].levelname == "INFO" and "waits for it" in said[0].getMessage()
    assert 2 <= len(said) <= 4, [r.getMessage() for r in said]  # at 0 s, then every 0.5 s: not every try
    assert all(r.levelname == "WARNING" and "has waited for it for" in r.getMessage() for r in said[1:])
    assert len(held.triggers) > 10  # tried about every 0.05 s
    assert set(held.triggers) == {"startup"} and [r.trigger for r in reports] == ["startup"]


def test_a_dry_run_takes_no_lock(reconciler: Reconciler) -> None:
    """`gitopsd plan` works on a scratch copy: a daemon's long pass must not hold up a pull request's plan."""
    with PassLock(reconciler.state_dir, "daemon").held():
        result = reconciler.reconcile("plan", dry_run=True)
    assert not result.error and len(result.actions) == 1
