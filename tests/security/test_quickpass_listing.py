"""What a hostile repository or a tampered state directory can hand the quick settled pass (`quickpass`): a
listing from `git ls-remote` of a remote it controls, and a branch name or URL from state.db. None of it may be
taken for a settled state or reach git as an option; anything unexpected leaves the decision to the full pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gitopsd.reconcile import quickpass
from tests.conftest import GitRepo

OID = "a" * 40
GOOD = f"ref: refs/heads/main\tHEAD\n{OID}\tHEAD\n{OID}\trefs/heads/main\n{'b' * 40}\trefs/tags/v1\n"


def test_a_well_formed_listing_is_read() -> None:
    assert quickpass.parse_listing(GOOD) == ("refs/heads/main", {"refs/heads/main": OID})
    assert quickpass.parse_listing(f"{'c' * 64}\trefs/heads/sha256\n") == (None, {"refs/heads/sha256": "c" * 64})


@pytest.mark.parametrize(
    "listing",
    [
        f"{OID}\trefs/heads/main\textra\n",  # a third field
        f"{OID} refs/heads/main\n",  # no tab
        f"{OID[:-1]}\trefs/heads/main\n",  # a short id
        f"{OID.upper()}\trefs/heads/main\n",  # not git's form
        f"{OID}\trefs/heads/ma in\n",  # whitespace in a name
        f"{OID}\trefs/heads/a\x1b[31m\n",  # a control character
        f"{OID}\trefs/heads/main\n{'b' * 40}\trefs/heads/main\n",  # one branch twice
        "ref: refs/heads/main\trefs/heads/alias\n",  # a symbolic branch
        "ref: refs/heads/main\tHEAD\nref: refs/heads/other\tHEAD\n",  # two HEADs
        "ref: refs/tags/v1\tHEAD\n",  # HEAD to something that is not a branch
        "ref: -x\tHEAD\n",
    ],
)
def test_a_garbled_or_hostile_listing_is_not_read(listing: str) -> None:
    assert quickpass.parse_listing(listing) is None


def test_nothing_that_looks_like_an_option_reaches_git(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror.git"
    mirror.mkdir()
    (mirror / "HEAD").write_text("ref: refs/heads/main\n")
    marker = tmp_path / "ran"
    assert quickpass.remote_commit(f"--upload-pack=touch {marker}", mirror, None) is None
    assert quickpass.remote_commit(str(tmp_path), Path(f"--upload-pack=touch {marker}"), None) is None
    assert not marker.exists()


@pytest.mark.parametrize(
    "ref",
    [
        "--output={marker}",  # an option of rev-parse
        "-C{marker}",
        "HEAD:README.md",  # a blob, not a commit
        "HEAD^{{tree}}",
        "main@{{upstream}}",  # no upstream here
        "no-such-branch",
    ],
)
def test_a_plan_branch_names_a_commit_or_nothing(demo_repo: GitRepo, tmp_path: Path, ref: str) -> None:
    """`gitopsd plan --branch REF` on a settled state directory: REF goes to `git rev-parse` after
    --end-of-options, and only a commit it names is taken (anything else: the full plan, which says why)."""
    marker = tmp_path / "ran"
    assert quickpass.local_commit(demo_repo.path, ref.format(marker=marker)) is None
    assert not marker.exists()
    assert quickpass.local_commit(demo_repo.path, "HEAD") == demo_repo.git("rev-parse", "HEAD")
