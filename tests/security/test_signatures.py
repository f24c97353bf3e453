"""Signed commits, an operator option: every commit between the applied one and a new tip must be signed by an
allowed key, or nothing of the new tip is applied.

Each case builds real commits with real keys: SSH signatures made by git and `ssh-keygen -Y sign`, OpenPGP
signatures made by git and `gpg` in throwaway GnuPG homes. Hostile commits (a copied signature, a signature by
an expired, revoked or unknown key, one that names a keyserver) are forged the way an attacker would: by
writing the commit object with `git hash-object`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gitopsd.reconcile.planner import Resubmit, Submit
from gitopsd.reconcile.reconciler import PassResult, Reconciler
from gitopsd.source.signatures import (
    Problem,
    SignatureChecker,
    SignatureFormat,
    gpg_status_problem,
    signature_format,
    ssh_principals,
    ssh_verified,
)
from gitopsd.source.verify import APPLIED_REF, VerifyPolicy
from tests.conftest import GIT_ENV, GitRepo, gitopsd
from tests.security.conftest import Canary

MODEL = "models/blobs.yaml"
TRAIN = "src/train.py"


# --- keys and signed commits --------------------------------------------------------------------------------


@dataclass
class GpgKey:
    home: Path
    fingerprint: str


@dataclass
class Keys:
    alice_ssh: Path
    mallory_ssh: Path
    allowed_signers: Path
    alice_gpg: GpgKey
    eve_gpg: GpgKey
    expired_gpg: GpgKey
    revoked_gpg: GpgKey
    keyring: Path
    """An exported keyring with alice's, the expired and the revoked key: the allowed OpenPGP keys."""


def _run(argv: list[str], env: dict[str, str] | None = None, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(argv, env={**os.environ, **(env or {})}, input=stdin, capture_output=True, check=False)
    assert done.returncode == 0, f"{argv}: {done.stderr.decode(errors='replace')}"
    return done.stdout


def _gpg(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    return _run(["gpg", "--homedir", str(home), "--batch", "--yes", "--pinentry-mode", "loopback", *args], stdin=stdin)


def _stop_agent(home: Path) -> None:
    """gpg starts a gpg-agent per home it touches; stop the one of a home this module made."""
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)


@pytest.fixture
def gnupg_home(tmp_path: Path) -> Iterator[Any]:
    """Makes empty GnuPG homes in tmp_path, and stops their agents afterwards."""
    made: list[Path] = []

    def make(name: str) -> Path:
        home = tmp_path / name
        home.mkdir(mode=0o700)
        made.append(home)
        return home

    yield make
    for home in made:
        _stop_agent(home)


def _gpg_key(home: Path, uid: str, *, when: str | None = None, expire: str = "0") -> GpgKey:
    home.mkdir(mode=0o700, parents=True)
    faked = ["--faked-system-time", when] if when else []
    _gpg(home, *faked, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", expire)
    colons = _gpg(home, "--list-keys", "--with-colons", uid).decode()
    fingerprint = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))
    return GpgKey(home=home, fingerprint=fingerprint)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    root = tmp_path_factory.mktemp("keys")
    for name in ("alice", "mallory"):
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(root / name)])
    alice_pub = (root / "alice.pub").read_text().split()
    allowed = root / "allowed_signers"
    allowed.write_text(f'test@example.invalid namespaces="git" {alice_pub[0]} {alice_pub[1]}\n')
    alice = _gpg_key(root / "gpg-alice", "Test User <test@example.invalid>")
    eve = _gpg_key(root / "gpg-eve", "Test User <test@example.invalid>")
    expired = _gpg_key(root / "gpg-expired", "Old Key <old@example.invalid>", when="20200101T000000!", expire="1y")
    revoked = _gpg_key(root / "gpg-revoked", "Gone Key <gone@example.invalid>")
    keyring = root / "allowed.gpg"
    exported = b"".join(_gpg(k.home, "--export", k.fingerprint) for k in (alice, expired, revoked))
    keyring.write_bytes(exported)
    yield Keys(
        alice_ssh=root / "alice",
        mallory_ssh=root / "mallory",
        allowed_signers=allowed,
        alice_gpg=alice,
        eve_gpg=eve,
        expired_gpg=expired,
        revoked_gpg=revoked,
        keyring=keyring,
    )
    for key in (alice, eve, expired, revoked):
        _stop_agent(key.home)


def _git(repo: GitRepo, *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> str:
    return _run(["git", "-C", str(repo.path), *args], env={**GIT_ENV, **(env or {})}, stdin=stdin).decode().strip()


def ssh_commit(repo: GitRepo, message: str, key: Path, *, amend: bool = False) -> str:
    """Stage everything and commit, signed by the SSH key `key` (as `git commit -S` with gpg.format=ssh)."""
    _git(repo, "add", "-A")
    sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-q", "-S", "--allow-empty"]
    _git(repo, *sign, *(["--amend", "--no-edit"] if amend else ["-m", message]))
    return _git(repo, "rev-parse", "HEAD")


def gpg_commit(repo: GitRepo, message: str, key: GpgKey, *, amend: bool = False) -> str:
    """Stage everything and commit, signed by the OpenPGP key `key` (`git commit -S` with gpg)."""
    _git(repo, "add", "-A")
    sign = ["-c", "gpg.format=openpgp", "-c", f"user.signingkey={key.fingerprint}", "commit", "-q", "-S"]
    env = {"GNUPGHOME": str(key.home)}
    _git(repo, *sign, "--allow-empty", *(["--amend", "--no-edit"] if amend else ["-m", message]), env=env)
    return _git(repo, "rev-parse", "HEAD")


def plain_commit(repo: GitRepo, message: str) -> str:
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


def payload(repo: GitRepo, commit: str) -> bytes:
    """The bytes a commit signature signs: the commit object without its gpgsig header."""
    raw = _run(["git", "-C", str(repo.path), "cat-file", "commit", commit])
    header, _, body = raw.partition(b"\n\n")
    kept: list[bytes] = []
    in_sig = False
    for line in header.split(b"\n"):
        if line.startswith(b"gpgsig "):
            in_sig = True
            continue
        if in_sig and line.startswith(b" "):
            continue
        in_sig = False
        kept.append(line)
    return b"\n".join(kept) + b"\n\n" + body


def forge(repo: GitRepo, commit: str, signature: bytes) -> str:
    """Rewrite `commit` (the branch tip) with `signature` in its gpgsig header, as an attacker could push it."""
    header, _, body = payload(repo, commit).partition(b"\n\n")
    lines = signature.rstrip(b"\n").split(b"\n")
    forged = header + b"\ngpgsig " + b"\n ".join(lines) + b"\n\n" + body
    new = _git(repo, "hash-object", "-t", "commit", "-w", "--stdin", "--literally", stdin=forged)
    _git(repo, "update-ref", "HEAD", new)
    return new


def gpg_sign_forged(repo: GitRepo, commit: str, key: GpgKey, *extra: str) -> str:
    """Sign `commit` with `key` by hand (so gpg options such as a faked time apply) and forge it into the branch."""
    signature = _gpg(key.home, *extra, "--local-user", key.fingerprint, "--armor", "--detach-sign",
                     stdin=payload(repo, commit))  # fmt: skip
    return forge(repo, commit, signature)


def signature_of(repo: GitRepo, commit: str) -> bytes:
    raw = _run(["git", "-C", str(repo.path), "cat-file", "commit", commit])
    header = raw.partition(b"\n\n")[0].split(b"\n")
    start = next(i for i, line in enumerate(header) if line.startswith(b"gpgsig "))
    lines = [header[start].removeprefix(b"gpgsig ")]
    lines += [line[1:] for line in header[start + 1 :] if line.startswith(b" ")]
    return b"\n".join(lines) + b"\n"


# --- reconcilers and what they show ---------------------------------------------------------------------------


@pytest.fixture
def make_reconciler(demo_repo: GitRepo, state_dir: Path) -> Iterator[Any]:
    made: list[Reconciler] = []

    def make(**policy: Any) -> Reconciler:
        rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), verify=VerifyPolicy(**policy))
        made.append(rec)
        return rec

    yield make
    for rec in made:
        rec.close()


@pytest.fixture
def ssh_repo(demo_repo: GitRepo, keys: Keys) -> GitRepo:
    """The demo repository with its first commit signed by alice's SSH key."""
    ssh_commit(demo_repo, "", keys.alice_ssh, amend=True)
    return demo_repo


def status(state_dir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(gitopsd(state_dir, "status", "--json").stdout)
    return doc


def versions(state_dir: Path) -> list[str]:
    out = json.loads(gitopsd(state_dir, "registry", "list", "--json").stdout)
    return [v["label"] for v in out]


def retrain(repo: GitRepo, note: str) -> None:
    """A change to the training code: applied, it would train a new version."""
    repo.write(TRAIN, repo.read(TRAIN) + f"\n# {note}\n")


def assert_no_new_training(result: PassResult) -> None:
    """The pass started nothing: no training submitted (runs of the applied commit may still progress)."""
    started = [a for a in result.actions if isinstance(a, Submit | Resubmit)]
    assert started == [], f"a pass over a refused tip started {started}"


def assert_refused(state_dir: Path, good: str | None, bad: str, *words: str) -> dict[str, Any]:
    """The repository says SignatureInvalid naming `bad` and the words; `good` is still the applied commit."""
    repo: dict[str, Any] = status(state_dir)["repository"]
    assert repo["error_reason"] == "SignatureInvalid", repo
    assert repo["applied_commit"] == good
    assert bad[:12] in repo["error"], repo["error"]
    for word in words:
        assert word in repo["error"], repo["error"]
    return repo


# --- the attack cases -----------------------------------------------------------------------------------------


def test_unsigned_commit_is_refused_and_the_last_signed_commit_stays_in_force(
    ssh_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path
) -> None:
    rec = make_reconciler(allowed_signers=keys.allowed_signers)
    rec.reconcile_until_settled(timeout_s=60)
    good = status(state_dir)["repository"]["applied_commit"]
    assert versions(state_dir) == ["blobs@1"]

    retrain(ssh_repo, "an unsigned change")
    bad = plain_commit(ssh_repo, "Unsigned change to the training")
    result = rec.reconcile_until_settled(timeout_s=60)
    assert result.actions == (), "nothing of the unsigned tip is applied"
    assert "SignatureInvalid" not in result.error and bad[:12] in result.error
    repo = assert_refused(state_dir, good, bad, '"Unsigned change to the training"', "not signed", "stays in force")
    assert repo["fetched_commit"] == bad
    assert versions(state_dir) == ["blobs@1"], "nothing was trained from the unsigned tip"
    assert next(m for m in status(state_dir)["models"] if m["name"] == "blobs")["ready"] is True
    shown = gitopsd(state_dir, "status").stdout
    assert "SignatureInvalid" in shown and bad[:12] in shown
    assert_no_new_training(rec.reconcile())


def test_commit_signed_by_a_key_not_in_allowed_signers_is_refused(
    ssh_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path
) -> None:
    rec = make_reconciler(allowed_signers=keys.allowed_signers)
    good = rec.reconcile().commit
    retrain(ssh_repo, "mallory's change")
    bad = ssh_commit(ssh_repo, "Looks like the test user", keys.mallory_ssh)  # same name and e-mail as alice
    assert_no_new_training(rec.reconcile())
    fingerprint = _run(["ssh-keygen", "-l", "-f", f"{keys.mallory_ssh}.pub"]).split()[1].decode()
    assert_refused(state_dir, good, bad, f"signed by SSH key {fingerprint}, which is not allowed")


def test_good_tip_over_an_unsigned_middle_commit_is_refused(
    ssh_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path
) -> None:
    rec = make_reconciler(allowed_signers=keys.allowed_signers)
    good = rec.reconcile().commit
    retrain(ssh_repo, "hidden in the middle")
    middle = plain_commit(ssh_repo, "Unsigned middle")
    tip = ssh_commit(ssh_repo, "Signed tip", keys.alice_ssh)
    assert_no_new_training(rec.reconcile())
    repo = assert_refused(state_dir, good, middle, '"Unsigned middle": not signed', "1 of the 2 commit(s)")
    assert tip[:12] in repo["error"].splitlines()[0] and '"Signed tip"' not in repo["error"]


def test_force_push_onto_a_history_with_an_unsigned_commit_is_refused(
    ssh_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path
) -> None:
    rec = make_reconciler(allowed_signers=keys.allowed_signers)
    root = rec.reconcile().commit
    assert root is not None
    applied = ssh_commit(ssh_repo, "Signed second commit", keys.alice_ssh)
    assert rec.reconcile().commit == applied
    _git(ssh_repo, "reset", "-q", "--hard", root)  # rewrite history from the root: a force-push
    retrain(ssh_repo, "rewritten")
    unsigned = plain_commit(ssh_repo, "Rewritten, unsigned")
    ssh_commit(ssh_repo, "Signed tip of the rewrite", keys.alice_ssh)

    assert_no_new_training(rec.reconcile())
    assert_refused(state_dir, applied, unsigned, '"Rewritten, unsigned": not signed')
    check = ["git", "-C", str(ssh_repo.path), "merge-base", "--is-ancestor", applied, "HEAD"]
    assert subprocess.run(check, check=False).returncode == 1, "the applied commit is no longer in the branch"
    mirror = Path(rec.source.mirror_dir)
    ssh_commit(ssh_repo, "Another signed commit", keys.alice_ssh)
    rec.source.fetch()  # a fetch that prunes branches leaves the ref that keeps the applied commit
    kept = _run(["git", "--git-dir", str(mirror), "rev-parse", APPLIED_REF]).decode().strip()
    assert kept == applied, "the applied commit is kept in the mirror though no branch reaches it any more"


def test_signed_commit_on_a_refused_one_stays_refused_until_history_is_fixed(
    ssh_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path
) -> None:
    rec = make_reconciler(allowed_signers=keys.allowed_signers)
    rec.reconcile_until_settled(timeout_s=60)
    good = status(state_dir)["repository"]["applied_commit"]
    retrain(ssh_repo, "unsigned")
    bad = plain_commit(ssh_repo, "Forgot to sign")
    assert_no_new_training(rec.reconcile())
    assert_refused(state_dir, good, bad)

    retrain(ssh_repo, "signed on top")
    on_top = ssh_commit(ssh_repo, "Signed, on top of the unsigned one", keys.alice_ssh)
    assert_no_new_training(rec.reconcile())
    repo = assert_refused(state_dir, good, bad, '"Forgot to sign": not signed')
    assert on_top[:12] in repo["error"], "the refusal is about the new tip"
    assert versions(state_dir) == ["blobs@1"]

    _git(ssh_repo, "reset", "-q", "--hard", good)  # history fixed: force-push back to signed history
    retrain(ssh_repo, "signed properly")
    fixed = ssh_commit(ssh_repo, "Signed fix", keys.alice_ssh)
    rec.reconcile_until_settled(timeout_s=60)
    repo = status(state_dir)["repository"]
    assert repo["applied_commit"] == fixed and repo["error_reason"] == "" and repo["error"] == ""
    assert versions(state_dir) == ["blobs@1", "blobs@2"]


def test_signed_ssh_commits_apply_and_train(
    ssh_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path
) -> None:
    rec = make_reconciler(allowed_signers=keys.allowed_signers)
    rec.reconcile_until_settled(timeout_s=60)
    retrain(ssh_repo, "first")
    ssh_commit(ssh_repo, "Signed one", keys.alice_ssh)
    retrain(ssh_repo, "second")
    tip = ssh_commit(ssh_repo, "Signed two", keys.alice_ssh)
    _git(ssh_repo, "checkout", "-q", "-b", "side", "HEAD~1")
    ssh_commit(ssh_repo, "Signed side commit", keys.alice_ssh)
    _git(ssh_repo, "checkout", "-q", "main")
    _git(ssh_repo, "-c", "gpg.format=ssh", "-c", f"user.signingkey={keys.alice_ssh}", "merge", "-q", "-S",
         "--no-ff", "-m", "Signed merge", "side")  # fmt: skip
    merge = _git(ssh_repo, "rev-parse", "HEAD")
    assert merge != tip
    result = rec.reconcile_until_settled(timeout_s=60)
    assert result.error == ""
    repo = status(state_dir)["repository"]
    assert repo["applied_commit"] == merge and repo["error_reason"] == ""
    assert versions(state_dir) == ["blobs@1", "blobs@2"]


@pytest.mark.parametrize("keyring", ["exported-file", "gnupg-home"])
def test_signed_gpg_commits_apply_and_train(
    demo_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path, keyring: str
) -> None:
    gpg_commit(demo_repo, "", keys.alice_gpg, amend=True)
    where = keys.keyring if keyring == "exported-file" else keys.alice_gpg.home
    rec = make_reconciler(gpg_keyring=where)
    rec.reconcile_until_settled(timeout_s=60)
    retrain(demo_repo, "gpg-signed change")
    tip = gpg_commit(demo_repo, "GPG-signed change", keys.alice_gpg)
    result = rec.reconcile_until_settled(timeout_s=60)
    assert result.error == ""
    assert status(state_dir)["repository"]["applied_commit"] == tip
    assert versions(state_dir) == ["blobs@1", "blobs@2"]


def test_gpg_signature_by_an_unknown_key_is_refused_and_no_keyserver_is_asked(
    demo_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path, canary: Canary, gnupg_home: Any
) -> None:
    # The operator's GnuPG home even asks gpg to fetch unknown keys (gpg itself would ask the listener, and
    # import whatever key it served); gitopsd's gpgv never reads that configuration.
    home = gnupg_home("operator-gnupg")
    (home / "pubring.kbx").write_bytes(b"")
    _gpg(home, "--import", str(keys.keyring))
    (home / "gpg.conf").write_text(
        f"auto-key-retrieve\nkeyserver {canary.url}\nkeyserver-options honor-keyserver-url\n"
    )
    gpg_commit(demo_repo, "", keys.alice_gpg, amend=True)
    rec = make_reconciler(gpg_keyring=home)
    good = rec.reconcile().commit
    retrain(demo_repo, "eve's change")
    plain = plain_commit(demo_repo, "Signed by eve, who names a keyserver")
    bad = gpg_sign_forged(demo_repo, plain, keys.eve_gpg, "--sig-keyserver-url", canary.url)
    assert_no_new_training(rec.reconcile())
    eve_id = keys.eve_gpg.fingerprint[-16:]
    assert_refused(state_dir, good, bad, f"signed by OpenPGP key {eve_id}, which is not in the allowed keyring")
    canary.assert_untouched()
    assert eve_id not in _gpg(home, "--list-keys", "--with-colons").decode(), "no key was imported"


@pytest.mark.parametrize("which", ["expired", "revoked"])
def test_gpg_signature_by_an_expired_or_revoked_key_is_refused(
    demo_repo: GitRepo,
    keys: Keys,
    make_reconciler: Any,
    state_dir: Path,
    tmp_path: Path,
    gnupg_home: Any,
    which: str,
) -> None:
    keyring = tmp_path / "allowed.gpg"
    keyring.write_bytes(keys.keyring.read_bytes())
    if which == "revoked":
        revocation = keys.revoked_gpg.home / "openpgp-revocs.d" / f"{keys.revoked_gpg.fingerprint}.rev"
        cert = revocation.read_text().replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----BEGIN PGP PUBLIC KEY BLOCK-----"
        )
        scratch = gnupg_home("scratch-gnupg")
        _gpg(scratch, "--import", str(keyring))
        _gpg(scratch, "--import", stdin=cert.encode())
        keyring.write_bytes(_gpg(scratch, "--export"))
    gpg_commit(demo_repo, "", keys.alice_gpg, amend=True)
    rec = make_reconciler(gpg_keyring=keyring)
    good = rec.reconcile().commit
    retrain(demo_repo, which)
    plain = plain_commit(demo_repo, f"Signed by the {which} key")
    key = keys.expired_gpg if which == "expired" else keys.revoked_gpg
    # The expired key signs at a time when it was still valid, as a commit date can claim.
    faked = ["--faked-system-time", "20200601T000000!"] if which == "expired" else []
    bad = gpg_sign_forged(demo_repo, plain, key, *faked)
    assert_no_new_training(rec.reconcile())
    assert_refused(
        state_dir,
        good,
        bad,
        f"signed by OpenPGP key {key.fingerprint[-16:]}, which {'has expired' if which == 'expired' else 'is revoked'}",
    )


@pytest.mark.parametrize("kind", ["ssh", "gpg"])
def test_signature_copied_from_another_commit_is_refused(
    demo_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path, kind: str
) -> None:
    if kind == "ssh":
        good = ssh_commit(demo_repo, "", keys.alice_ssh, amend=True)
        rec = make_reconciler(allowed_signers=keys.allowed_signers)
    else:
        good = gpg_commit(demo_repo, "", keys.alice_gpg, amend=True)
        rec = make_reconciler(gpg_keyring=keys.keyring)
    assert rec.reconcile().commit == good
    retrain(demo_repo, "with a borrowed signature")
    plain = plain_commit(demo_repo, "Borrowed signature")
    bad = forge(demo_repo, plain, signature_of(demo_repo, good))
    assert_no_new_training(rec.reconcile())
    words = "the SSH signature does not verify" if kind == "ssh" else "does not match the commit (BADSIG"
    assert_refused(state_dir, good, bad, words)


@pytest.mark.parametrize(
    ("signature", "words"),
    [
        (b"-----BEGIN SIGNED MESSAGE-----\nMIAGCSqGSIb3DQEHAqCAMIACAQEx\n-----END SIGNED MESSAGE-----\n", "(x509)"),
        (b"trust me\n", "(unknown)"),
        (b"-----BEGIN PGP SIGNATURE-----\n\nnot really\n-----END PGP SIGNATURE-----\n", "only SSH signatures"),
        (b"-----BEGIN SSH SIGNATURE-----\n" + b"A" * 70_000 + b"\n-----END SSH SIGNATURE-----\n", "larger than"),
        (b"-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n", "(unreadable signature)"),
    ],
    ids=["x509", "garbage", "openpgp-not-allowed", "huge", "truncated-ssh"],
)
def test_signature_in_a_format_or_shape_not_accepted_is_refused(
    ssh_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path, signature: bytes, words: str
) -> None:
    rec = make_reconciler(allowed_signers=keys.allowed_signers)
    good = rec.reconcile().commit
    retrain(ssh_repo, "odd signature")
    bad = forge(ssh_repo, plain_commit(ssh_repo, "Odd signature"), signature)
    assert_no_new_training(rec.reconcile())
    assert_refused(state_dir, good, bad, words)


def test_merge_bringing_in_unsigned_commits_is_refused(
    ssh_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path
) -> None:
    rec = make_reconciler(allowed_signers=keys.allowed_signers)
    good = rec.reconcile().commit
    _git(ssh_repo, "checkout", "-q", "-b", "feature")
    retrain(ssh_repo, "from an unsigned branch")
    side = plain_commit(ssh_repo, "Unsigned feature work")
    _git(ssh_repo, "checkout", "-q", "main")
    ssh_commit(ssh_repo, "Signed main work", keys.alice_ssh)
    _git(ssh_repo, "-c", "gpg.format=ssh", "-c", f"user.signingkey={keys.alice_ssh}", "merge", "-q", "-S",
         "--no-ff", "-m", "Signed merge of an unsigned branch", "feature")  # fmt: skip
    assert_no_new_training(rec.reconcile())
    repo = assert_refused(state_dir, good, side, '"Unsigned feature work": not signed', "1 of the 3 commit(s)")
    assert "Signed merge" not in repo["error"]


# --- the first pass, the bound, the cache ---------------------------------------------------------------------


def test_first_pass_checks_the_tip_only(demo_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path) -> None:
    unsigned_root = _git(demo_repo, "rev-parse", "HEAD")
    tip = ssh_commit(demo_repo, "First signed commit", keys.alice_ssh)
    rec = make_reconciler(allowed_signers=keys.allowed_signers)
    result = rec.reconcile()
    assert result.error == "" and status(state_dir)["repository"]["applied_commit"] == tip
    assert unsigned_root != tip


def test_first_pass_with_an_unsigned_tip_applies_nothing(
    demo_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path
) -> None:
    tip = _git(demo_repo, "rev-parse", "HEAD")
    rec = make_reconciler(allowed_signers=keys.allowed_signers)
    result = rec.reconcile()
    assert result.actions == () and result.active == 0
    repo = assert_refused(state_dir, None, tip, "no earlier commit stays in force", "the tip lacks", "not signed")
    assert repo["applied_commit"] is None
    assert status(state_dir)["models"] == []
    assert not (state_dir / "runs").exists() or not any((state_dir / "runs").iterdir())


def test_since_makes_the_first_pass_check_every_commit_after_it(
    demo_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path
) -> None:
    root = _git(demo_repo, "rev-parse", "HEAD")  # unsigned, and trusted by the operator
    middle = plain_commit(demo_repo, "Unsigned after the trusted commit")
    tip = ssh_commit(demo_repo, "Signed tip", keys.alice_ssh)
    rec = make_reconciler(allowed_signers=keys.allowed_signers, since=root)
    assert_no_new_training(rec.reconcile())
    assert_refused(state_dir, None, middle, f"after {root[:12]}", '"Unsigned after the trusted commit"')

    _git(demo_repo, "reset", "-q", "--hard", root)
    tip = ssh_commit(demo_repo, "Signed, directly after the trusted commit", keys.alice_ssh)
    assert rec.reconcile().error == ""
    assert status(state_dir)["repository"]["applied_commit"] == tip


def test_since_must_be_a_commit_of_the_repository(
    ssh_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path
) -> None:
    missing = "0123456789abcdef" * 2 + "01234567"
    rec = make_reconciler(allowed_signers=keys.allowed_signers, since=missing)
    tip = _git(ssh_repo, "rev-parse", "HEAD")
    assert_no_new_training(rec.reconcile())
    assert_refused(state_dir, None, tip, f"the verify `since` commit {missing[:12]} is not in this repository")


def test_an_applied_commit_lost_from_the_mirror_refuses_until_since_is_set(
    ssh_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path
) -> None:
    applied = make_reconciler(allowed_signers=keys.allowed_signers).reconcile().commit
    assert applied is not None
    _git(ssh_repo, "checkout", "-q", "--orphan", "rewritten")
    root = ssh_commit(ssh_repo, "A new root", keys.alice_ssh)
    _git(ssh_repo, "branch", "-q", "-M", "main")  # main now has a history without the applied commit
    shutil.rmtree(state_dir / "source.git")  # and the mirror is rebuilt from scratch
    tip = ssh_commit(ssh_repo, "Signed on the new root", keys.alice_ssh)

    assert_no_new_training(make_reconciler(allowed_signers=keys.allowed_signers).reconcile())
    assert_refused(state_dir, applied, tip, f"the last applied commit {applied[:12]} is no longer in the mirror")
    assert make_reconciler(allowed_signers=keys.allowed_signers, since=root).reconcile().error == ""
    assert status(state_dir)["repository"]["applied_commit"] == tip


def test_a_push_of_more_commits_than_the_bound_is_refused_whole(
    ssh_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path
) -> None:
    rec = make_reconciler(allowed_signers=keys.allowed_signers, max_commits=3)
    good = rec.reconcile().commit
    assert good is not None
    for n in range(4):
        tip = ssh_commit(ssh_repo, f"Signed {n}", keys.alice_ssh)
    assert_no_new_training(rec.reconcile())
    assert_refused(state_dir, good, tip, f"more than 3 new commits after {good[:12]}", "max_commits")
    assert rec.verifier is not None and rec.verifier._last is not None
    assert rec.verifier._last[1].checked == 0, "none was checked"


class CountingChecker(SignatureChecker):
    """The real checker, counting the commits it was asked about."""

    calls = 0

    def problem(self, signature: bytes | None, payload: bytes | None) -> Problem | None:
        CountingChecker.calls += 1
        return super().problem(signature, payload)


def test_a_pass_whose_tip_did_not_move_checks_nothing_again(
    ssh_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path
) -> None:
    rec = make_reconciler(allowed_signers=keys.allowed_signers)
    assert rec.verifier is not None
    rec.verifier.checker = CountingChecker(allowed_signers=keys.allowed_signers, gpg_keyring=None, timeout_s=30)
    CountingChecker.calls = 0
    rec.reconcile()
    assert CountingChecker.calls == 1
    bad = plain_commit(ssh_repo, "Unsigned")
    for _ in range(3):
        assert_no_new_training(rec.reconcile())
    assert CountingChecker.calls == 2, "a refused tip that did not move is not checked again"
    ssh_commit(ssh_repo, "Signed on top", keys.alice_ssh)
    rec.reconcile()
    assert CountingChecker.calls == 3, "only the new commit is checked; the unsigned one's verdict is reused"
    assert_refused(state_dir, status(state_dir)["repository"]["applied_commit"], bad)


def test_a_change_to_the_allowed_keys_takes_effect_on_the_next_pass(
    ssh_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(keys.allowed_signers.read_text())
    rec = make_reconciler(allowed_signers=allowed)
    good = rec.reconcile().commit
    bad = ssh_commit(ssh_repo, "Signed by mallory", keys.mallory_ssh)
    assert_no_new_training(rec.reconcile())
    assert_refused(state_dir, good, bad, "which is not allowed")

    pub = Path(f"{keys.mallory_ssh}.pub").read_text().split()
    allowed.write_text(allowed.read_text() + f"mallory@example.invalid {pub[0]} {pub[1]}\n")
    assert rec.reconcile().error == "", "a key the operator now allows is accepted without a restart"
    assert status(state_dir)["repository"]["applied_commit"] == bad


def test_a_missing_allowed_signers_file_refuses_until_it_exists(
    ssh_repo: GitRepo, keys: Keys, make_reconciler: Any, state_dir: Path, tmp_path: Path
) -> None:
    allowed = tmp_path / "late_allowed_signers"
    rec = make_reconciler(allowed_signers=allowed)
    tip = _git(ssh_repo, "rev-parse", "HEAD")
    assert_no_new_training(rec.reconcile())
    assert_refused(state_dir, None, tip, f"the allowed-signers file {allowed} does not exist")
    allowed.write_text(keys.allowed_signers.read_text())
    assert rec.reconcile().error == ""
    assert status(state_dir)["repository"]["applied_commit"] == tip


def test_cli_reconcile_and_plan_take_the_policy(ssh_repo: GitRepo, keys: Keys, state_dir: Path) -> None:
    flags = ["--verify-allowed-signers", str(keys.allowed_signers)]
    gitopsd(state_dir, "reconcile", "--repo", str(ssh_repo.path), *flags)
    bad = plain_commit(ssh_repo, "Unsigned")
    planned = gitopsd(state_dir, "plan", *flags, check=False)
    assert planned.returncode == 1 and bad[:12] in planned.stderr and "not signed" in planned.stderr
    done = gitopsd(state_dir, "reconcile", *flags, check=False)
    assert done.returncode == 1 and bad[:12] in done.stderr
    assert "Traceback" not in done.stderr
    assert status(state_dir)["repository"]["error_reason"] == "SignatureInvalid"
    usage = gitopsd(state_dir, "reconcile", "--verify-since", "abc", check=False)
    assert usage.returncode == 2 and "--verify-since needs" in usage.stderr


# --- the pure core --------------------------------------------------------------------------------------------


def test_policy_needs_keys_and_a_full_since() -> None:
    with pytest.raises(ValueError, match="needs allowed_signers, gpg_keyring or both"):
        VerifyPolicy()
    with pytest.raises(ValueError, match="not a full commit id"):
        VerifyPolicy(allowed_signers=Path("a"), since="HEAD~3")
    with pytest.raises(ValueError, match="at least 1"):
        VerifyPolicy(allowed_signers=Path("a"), max_commits=0)


def test_signature_format_from_the_armor() -> None:
    assert signature_format(b"-----BEGIN PGP SIGNATURE-----\n") is SignatureFormat.OPENPGP
    assert signature_format(b"-----BEGIN SSH SIGNATURE-----\n") is SignatureFormat.SSH
    assert signature_format(b"-----BEGIN SIGNED MESSAGE-----\n") is SignatureFormat.X509
    assert signature_format(b"") is SignatureFormat.UNKNOWN


_FPR = "F45A965F18006B054AE6747416C0DAAE64287E7D"
_GOOD = (  # recorded from gpgv 2.2.40 on a commit signed with an ed25519 key
    "[GNUPG:] NEWSIG\n"
    f"[GNUPG:] KEY_CONSIDERED {_FPR} 0\n"
    "[GNUPG:] GOODSIG 16C0DAAE64287E7D Alice <alice@example.invalid>\n"
    f"[GNUPG:] VALIDSIG {_FPR} 2026-11-30 1796062024 0 4 0 22 8 00 {_FPR}\n"
)


@pytest.mark.parametrize(
    ("status_lines", "why"),
    [
        (_GOOD, None),
        (_GOOD.replace("GOODSIG", "EXPKEYSIG"), "signed by OpenPGP key 16C0DAAE64287E7D, which has expired"),
        (_GOOD.replace("GOODSIG", "REVKEYSIG"), "signed by OpenPGP key 16C0DAAE64287E7D, which is revoked"),
        (_GOOD.replace("GOODSIG", "EXPSIG"), "the OpenPGP signature by key 16C0DAAE64287E7D has expired"),
        ("[GNUPG:] NEWSIG\n[GNUPG:] BADSIG 16C0DAAE64287E7D Alice\n", "does not match the commit (BADSIG"),
        (
            "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 16C0DAAE64287E7D 22 8 00 1796062024 9 F45A\n"
            "[GNUPG:] NO_PUBKEY 16C0DAAE64287E7D\n",
            "which is not in the allowed keyring",
        ),
        ("[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 16C0DAAE64287E7D 22 8 00 1 4 F45A\n", "cannot be checked (ERRSIG)"),
        (_GOOD.replace("[GNUPG:] VALIDSIG", "[GNUPG:] X"), "did not report a good"),
        ("", "did not report a good"),
        ("GOODSIG written by the commit message\n", "did not report a good"),
        (_GOOD + "[GNUPG:] NEWSIG\n[GNUPG:] BADSIG 1111 Mallory\n", "BADSIG from key 1111"),
        (_GOOD + "[GNUPG:] NEWSIG\n", "did not report a good"),
        (_GOOD + _GOOD, None),
    ],
    ids=[
        "good",
        "expkeysig",
        "revkeysig",
        "expsig",
        "badsig",
        "no-pubkey",
        "errsig",
        "no-validsig",
        "empty",
        "not-a-status-line",
        "good-then-bad",
        "second-unfinished",
        "two-good",
    ],
)
def test_gpgv_status_parsing(status_lines: str, why: str | None) -> None:
    problem = gpg_status_problem(status_lines)
    if why is None:
        assert problem is None
    else:
        assert problem is not None and why in problem.why and problem.final


def test_ssh_keygen_output_parsing() -> None:
    assert ssh_principals("alice@example.invalid\nbob\n\n") == ["alice@example.invalid", "bob"]
    assert len(ssh_principals("\n".join(f"p{n}" for n in range(50)))) == 8
    good = 'Good "git" signature for alice with ED25519 key SHA256:abc\n'
    assert ssh_verified(0, good)
    assert not ssh_verified(255, good)
    assert not ssh_verified(0, 'Good "file" signature for alice with ED25519 key SHA256:abc\n')
    assert not ssh_verified(0, 'Good "git" signature with ED25519 key SHA256:abc\n'), "check-novalidate's answer"
