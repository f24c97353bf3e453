"""A commit's subject and author are written by whoever pushed: they reach every version's lineage, every alias
move, and an operator's terminal through `gitopsd history` and `gitopsd lineage`."""

from __future__ import annotations

from pathlib import Path

from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.source.mirror import MAX_COMMIT_TEXT
from tests.conftest import GitRepo, on_a_terminal

#: Set the terminal's title, clear the screen, and (OSC 52) write the operator's clipboard.
ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b]52;c;ZWNobyBwd25lZA==\x07"


def test_escape_sequences_in_a_commit_never_reach_a_terminal_and_its_text_is_cut(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    demo_repo.edit("models/blobs.yaml", "--epochs 40", "--epochs 41")
    demo_repo.git("add", "-A")
    demo_repo.git("-c", f"user.name=Mallory {ESCAPES}", "commit", "-q", "-m", f"Retrain {ESCAPES}" + "A" * 100_000)
    result = reconciler.reconcile_until_settled(timeout_s=300, trigger="test")
    assert result.error == "", result.error
    [version] = reconciler.registry.list("blobs")
    info = version.lineage["commit_info"]
    for text in (info["subject"], info["author"]):
        assert "\x1b" not in text and "\x07" not in text
        assert len(text) <= MAX_COMMIT_TEXT
    assert info["subject"].startswith("Retrain \\x1b]0;owned\\x07") and info["subject"].endswith("…")
    shown = on_a_terminal(state_dir, "history", "blobs")
    assert "\x1b" not in shown and "(Retrain \\x1b]0;owned\\x07\\x1b[2J" in shown
    assert "\x1b" not in on_a_terminal(state_dir, "lineage", version.label)
