"""`gitopsd plan` pauses Python's cyclic collector while it plans, and always gives it back as it found it: plan
also runs inside other processes (tests, a forge integration), which must not be left without it. A loader's
first commit, which lives as long as its process, is frozen out of the collector's sight before it resumes."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitopsd.cli import plan as plan_module
from gitopsd.errors import SpecError
from gitopsd.reconcile.desired import DesiredLoader
from gitopsd.reconcile.gcpause import collector_paused
from gitopsd.source.mirror import Source
from tests.cli import invoke
from tests.conftest import GitRepo


@pytest.fixture
def collector() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()  # what a test froze goes back to the collector, as in a process that never froze it
    if enabled:
        gc.enable()
    else:
        gc.disable()


def _frozen(obj: object) -> bool:
    """Whether `obj` is in the collector's permanent generation: tracked, yet in none of the three it scans."""
    return gc.is_tracked(obj) and not any(any(o is obj for o in gc.get_objects(g)) for g in range(3))


def test_the_collector_is_off_during_a_plan_and_back_after_it(
    demo_repo: GitRepo,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    collector: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[tuple[str, bool]] = []

    def spy(name: str) -> None:
        real = getattr(plan_module, name)

        def called(*args: object, **kwargs: object) -> object:
            seen.append((name, gc.isenabled()))
            return real(*args, **kwargs)

        monkeypatch.setattr(plan_module, name, called)

    for name in ("_settled_plan", "_plan", "_print"):  # the settled plan's check, the full plan, the report
        spy(name)
    gc.enable()
    done = invoke(capsys, ["--state-dir", str(state_dir), "plan", "--repo", str(demo_repo.path)])
    assert done.exit_code == 0, done.output
    assert seen == [("_settled_plan", False), ("_plan", False), ("_print", False)]
    assert gc.isenabled()
    demo_repo.write("models/broken.yaml", "apiVersion: gitopsd/v1\nkind: Model\nmetadata: {name: b}\n")
    demo_repo.commit("A model without a spec")
    done = invoke(capsys, ["--state-dir", str(state_dir), "plan", "--repo", str(demo_repo.path)])
    assert done.exit_code == 1 and "models/broken.yaml" in done.output
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off_and_an_error_gives_it_back(collector: None) -> None:
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()
    gc.enable()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("planning failed")
    assert gc.isenabled()


def test_a_loaders_first_commit_is_frozen_and_later_ones_are_not(
    demo_repo: GitRepo, tmp_path: Path, collector: None
) -> None:
    source = Source(str(demo_repo.path), tmp_path / "mirror.git")
    source.fetch()
    first = demo_repo.git("rev-parse", "HEAD")
    demo_repo.write("models/broken.yaml", "apiVersion: gitopsd/v1\nkind: Model\nmetadata: {name: b}\n")
    broken = demo_repo.commit("A model without a spec")
    demo_repo.git("rm", "-q", "models/broken.yaml")
    demo_repo.commit("Fixed")
    source.fetch()
    gc.unfreeze()
    gc.enable()
    loader = DesiredLoader(source)
    with pytest.raises(SpecError):
        loader.load(broken)  # a commit that is never in force is not kept
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    state = loader.load(first)
    models = list(state.models.values())
    assert models and all(_frozen(m) and _frozen(m.spec) for m in models)
    assert gc.isenabled()
    demo_repo.write("models/extra.yaml", next(iter(demo_repo.path.glob("models/*.yaml"))).read_text()
                    .replace("name: ", "name: extra-", 1))  # fmt: skip
    third = demo_repo.commit("One more model")
    source.fetch()
    later = loader.load(third)
    added = [m for name, m in later.models.items() if name not in state.models]
    assert added and not any(_frozen(m) for m in added) and gc.isenabled()


def test_the_plan_is_freed_before_the_collector_resumes(
    demo_repo: GitRepo,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    collector: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Alive when the collector resumed, a plan's entries (ten thousand in a big one) were scanned by its first
    collection on the way out; they are freed by reference counting while it is still off."""
    import weakref

    plans: list[weakref.ref[object]] = []
    alive_at_a_collection: list[bool] = []
    real = plan_module._print

    def printed(outcome: plan_module._Planned, *args: object, **kwargs: object) -> int:
        plans.append(weakref.ref(outcome.plan))
        return real(outcome, *args, **kwargs)  # type: ignore[arg-type]

    def collecting(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and plans:
            alive_at_a_collection.append(plans[-1]() is not None)

    monkeypatch.setattr(plan_module, "_print", printed)
    gc.enable()
    threshold = gc.get_threshold()
    gc.callbacks.append(collecting)
    gc.set_threshold(1)  # a young collection at the first container made once the collector is back
    try:
        done = invoke(capsys, ["--state-dir", str(state_dir), "plan", "--repo", str(demo_repo.path)])
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(collecting)
    assert done.exit_code == 0, done.output
    assert plans and plans[0]() is None
    assert alive_at_a_collection and not any(alive_at_a_collection)
