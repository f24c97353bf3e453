"""`gitopsd plan` pauses Python's cyclic collector while it plans, and always gives it back as it found it: plan
also runs inside other processes (tests, a forge integration), which must not be left without it."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitopsd.cli import plan as plan_module
from gitopsd.reconcile.desired import collector_paused
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


def test_the_collector_is_off_during_a_plan_and_back_after_it(
    demo_repo: GitRepo,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    collector: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[bool] = []
    real = plan_module._plan

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(gc.isenabled())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(plan_module, "_plan", spy)
    gc.enable()
    done = invoke(capsys, ["--state-dir", str(state_dir), "plan", "--repo", str(demo_repo.path)])
    assert done.exit_code == 0, done.output
    assert seen == [False]
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
