"""`gitopsd plan` and `gitopsd reconcile --once` pause Python's cyclic collector while they work, and always give
it back as they found it: they also run inside other processes (tests, a forge integration), which must not be
left without it. `reconcile --wait`, which may pass for an hour, keeps it."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gitopsd.cli import plan as plan_module
from gitopsd.reconcile.desired import collector_paused
from gitopsd.reconcile.reconciler import Reconciler
from tests.cli import invoke
from tests.conftest import GitRepo


@pytest.fixture
def collector() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()
    else:
        gc.disable()


Spy = Callable[[object, str], list[bool]]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch, collector: None) -> Spy:
    """`spy(owner, name)` wraps `owner.name` to note, at each call, whether the collector is on; the collector is
    on when the test starts."""

    def wrap(owner: object, name: str) -> list[bool]:
        seen: list[bool] = []
        real = getattr(owner, name)

        def noting(*args: object, **kwargs: object) -> object:
            seen.append(gc.isenabled())
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, noting)
        return seen

    gc.enable()
    return wrap


def test_the_collector_is_off_during_a_plan_and_back_after_it(
    demo_repo: GitRepo, state_dir: Path, spy: Spy, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = spy(plan_module, "_plan")
    done = invoke(capsys, ["--state-dir", str(state_dir), "plan", "--repo", str(demo_repo.path)])
    assert done.exit_code == 0, done.output
    assert seen == [False]
    assert gc.isenabled()
    demo_repo.write("models/broken.yaml", "apiVersion: gitopsd/v1\nkind: Model\nmetadata: {name: b}\n")
    demo_repo.commit("A model without a spec")
    done = invoke(capsys, ["--state-dir", str(state_dir), "plan", "--repo", str(demo_repo.path)])
    assert done.exit_code == 1 and "models/broken.yaml" in done.output
    assert gc.isenabled()


def test_the_collector_is_off_during_one_reconcile_pass_and_on_while_it_waits(
    demo_repo: GitRepo, state_dir: Path, spy: Spy, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = spy(Reconciler, "reconcile")
    for spec in (demo_repo.path / "models").glob("*.yaml"):  # nothing trains: --wait returns after its first pass
        spec.write_text(spec.read_text().replace("spec:\n", "spec:\n  suspend: true\n", 1))
    demo_repo.commit("Suspend every model")
    base = ["--state-dir", str(state_dir), "reconcile", "--repo", str(demo_repo.path)]
    done = invoke(capsys, [*base, "--once"])
    assert done.exit_code == 0, done.output
    assert seen == [False] and gc.isenabled()
    demo_repo.write("models/broken.yaml", "apiVersion: gitopsd/v1\nkind: Model\nmetadata: {name: b}\n")
    demo_repo.commit("A model without a spec")
    done = invoke(capsys, [*base, "--once"])
    assert done.exit_code == 1 and gc.isenabled()
    seen.clear()
    done = invoke(capsys, [*base, "--wait", "--timeout", "60"])
    assert seen and all(seen) and gc.isenabled()


def test_a_collector_that_was_off_stays_off_and_an_error_gives_it_back(collector: None) -> None:
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()
    gc.enable()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("planning failed")
    assert gc.isenabled()
