"""One commit's signature, checked with the real tools against the keys the operator allows.

A signed commit carries its signature in the `gpgsig` header; pygit2 hands us that signature and the bytes it
signs. The format decides the tool:

- OpenPGP signatures go to `gpgv` with the operator's keyring. gpgv trusts every key of the keyrings it is
  given and no other: the keyring is the allow list. It never imports a key, never reads `gpg.conf`, never asks
  a keyserver or an agent, and runs in a private, empty home, so nothing in the daemon's or the operator's
  GnuPG configuration (an `auto-key-retrieve`, a keyserver) can widen that list.
- SSH signatures go to `ssh-keygen -Y find-principals` and `ssh-keygen -Y verify -n git` with the operator's
  allowed-signers file (git's `gpg.ssh.allowedSignersFile` format, options such as `valid-before` included).
- Any other format (x509/CMS) and an unsigned commit are refused.

A key's validity is judged now, not at the time the commit claims: the pusher writes that time. A commit signed
by a key that has since expired, been revoked or left the allow list is refused.

The parsers of the tools' output are pure; `SignatureChecker` is the thin shell that runs the tools, with an
argv list (no shell), a timeout on every process and a minimal environment.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

MAX_SIGNATURE_BYTES = 64 * 1024
"""A larger signature is refused unread: real ones are a few hundred bytes to a few KiB."""

MAX_PRINCIPALS = 8
"""At most this many principals of the allowed-signers file are tried for one SSH signature."""

_GPG_STATUS = "[GNUPG:] "


class SignatureFormat(StrEnum):
    OPENPGP = "OpenPGP"
    SSH = "SSH"
    X509 = "x509"
    UNKNOWN = "unknown"


def signature_format(signature: bytes) -> SignatureFormat:
    """The format of an armored commit signature, from its first line (as git tells them apart)."""
    head = signature.lstrip()[:64]
    if head.startswith(b"-----BEGIN PGP SIGNATURE-----") or head.startswith(b"-----BEGIN PGP MESSAGE-----"):
        return SignatureFormat.OPENPGP
    if head.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        return SignatureFormat.SSH
    if head.startswith(b"-----BEGIN SIGNED MESSAGE-----"):
        return SignatureFormat.X509
    return SignatureFormat.UNKNOWN


@dataclass(frozen=True, kw_only=True)
class Problem:
    """Why a commit's signature is not accepted.

    `final` is True when the answer depends only on the commit and the allowed keys (unsigned, bad signature,
    unknown key); False when the check itself could not run (a tool missing, a timeout, a keyring file absent),
    so it is worth asking again on the next pass.
    """

    why: str
    final: bool = True


_GPG_REFUSALS = (
    ("BADSIG", "the OpenPGP signature does not match the commit (BADSIG from key {key})"),
    ("REVKEYSIG", "signed by OpenPGP key {key}, which is revoked"),
    ("EXPKEYSIG", "signed by OpenPGP key {key}, which has expired"),
    ("EXPSIG", "the OpenPGP signature by key {key} has expired"),
    ("NO_PUBKEY", "signed by OpenPGP key {key}, which is not in the allowed keyring"),
    ("ERRSIG", "the OpenPGP signature by key {key} cannot be checked (ERRSIG)"),
)


def gpg_status_problem(status: str) -> Problem | None:
    """None when gpgv's `--status-fd` lines report only good signatures by allowed, valid keys; else why not.

    gpgv exits 0 for a signature by an expired or revoked key, so the exit code is not enough: every signature
    (NEWSIG) must end in GOODSIG and VALIDSIG, and none may be BADSIG, EXPSIG, EXPKEYSIG, REVKEYSIG, ERRSIG or
    NO_PUBKEY.
    """
    lines = [line[len(_GPG_STATUS) :].split() for line in status.splitlines() if line.startswith(_GPG_STATUS)]
    seen: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for words in lines:
        if words:
            seen.setdefault(words[0], words[1:])
            counts[words[0]] = counts.get(words[0], 0) + 1
    for keyword, text in _GPG_REFUSALS:
        if keyword in seen:
            args = seen[keyword]
            return Problem(why=text.format(key=args[0] if args else "?"))
    good, valid, signatures = counts.get("GOODSIG", 0), counts.get("VALIDSIG", 0), counts.get("NEWSIG", 0)
    if good == 0 or valid != good or (signatures and signatures != good):
        return Problem(why="gpgv did not report a good OpenPGP signature")
    return None


def ssh_principals(stdout: str) -> list[str]:
    """The principals `ssh-keygen -Y find-principals` printed, one a line, at most MAX_PRINCIPALS."""
    found = [line.strip() for line in stdout.splitlines() if line.strip()]
    return found[:MAX_PRINCIPALS]


def ssh_verified(returncode: int, stdout: str) -> bool:
    """`ssh-keygen -Y verify -n git` accepted the signature for the principal it was asked about."""
    return returncode == 0 and stdout.startswith('Good "git" signature for ')


class SignatureChecker:
    """Checks commit signatures against an allowed-signers file and/or an OpenPGP keyring.

    `gpg_keyring` is a keyring file (`gpg --export KEYID... > allowed.gpg`) or a GnuPG home directory, whose
    `pubring.kbx` / `pubring.gpg` is read (never written).
    """

    def __init__(
        self,
        *,
        allowed_signers: Path | None,
        gpg_keyring: Path | None,
        timeout_s: float,
        gpgv: str = "gpgv",
        ssh_keygen: str = "ssh-keygen",
    ) -> None:
        self.allowed_signers = allowed_signers
        self.gpg_keyring = gpg_keyring
        self.timeout_s = timeout_s
        self.gpgv = gpgv
        self.ssh_keygen = ssh_keygen

    def problem(self, signature: bytes | None, payload: bytes | None) -> Problem | None:
        """None when `signature` is a good signature of `payload` by an allowed key; else why not."""
        if not signature or payload is None:
            return Problem(why="not signed")
        if len(signature) > MAX_SIGNATURE_BYTES:
            return Problem(why=f"its signature is larger than {MAX_SIGNATURE_BYTES} bytes")
        kind = signature_format(signature)
        if kind is SignatureFormat.OPENPGP:
            if self.gpg_keyring is None:
                return Problem(why="signed with OpenPGP, but only SSH signatures are allowed here")
            return self._openpgp(signature, payload, self.gpg_keyring)
        if kind is SignatureFormat.SSH:
            if self.allowed_signers is None:
                return Problem(why="signed with SSH, but only OpenPGP signatures are allowed here")
            return self._ssh(signature, payload, self.allowed_signers)
        return Problem(why=f"signed in a format gitopsd does not accept ({kind})")

    def _openpgp(self, signature: bytes, payload: bytes, keyring: Path) -> Problem | None:
        keyrings = [keyring]
        if keyring.is_dir():
            keyrings = [p for p in (keyring / "pubring.kbx", keyring / "pubring.gpg") if p.is_file()]
            if not keyrings:
                return Problem(
                    why=f"the GPG keyring directory {keyring} has no pubring.kbx or pubring.gpg", final=False
                )
        elif not keyring.is_file():
            return Problem(why=f"the GPG keyring {keyring} does not exist", final=False)
        with tempfile.TemporaryDirectory(prefix="gitopsd-verify-") as tmp:
            home = Path(tmp)
            sig, data = _write(home, "commit.sig", signature), _write(home, "commit.data", payload)
            argv = [self.gpgv, "--homedir", str(home), "--status-fd", "1"]
            for ring in keyrings:
                argv += ["--keyring", str(ring.resolve())]
            done = self._run([*argv, "--", str(sig), str(data)], home)
        if isinstance(done, Problem):
            return done
        return gpg_status_problem(done.stdout)

    def _ssh(self, signature: bytes, payload: bytes, allowed: Path) -> Problem | None:
        if not allowed.is_file():
            return Problem(why=f"the allowed-signers file {allowed} does not exist", final=False)
        with tempfile.TemporaryDirectory(prefix="gitopsd-verify-") as tmp:
            home = Path(tmp)
            sig = _write(home, "commit.sig", signature)
            found = self._run([self.ssh_keygen, "-Y", "find-principals", "-s", str(sig), "-f", str(allowed)], home)
            if isinstance(found, Problem):
                return found
            principals = ssh_principals(found.stdout) if found.returncode == 0 else []
            if not principals:
                return Problem(why=f"signed by SSH key {self._fingerprint(sig, payload, home)}, which is not allowed")
            said: list[str] = []
            for principal in principals:
                verify = [self.ssh_keygen, "-Y", "verify", "-f", str(allowed), "-I", principal, "-n", "git"]
                done = self._run([*verify, "-s", str(sig)], home, payload)
                if isinstance(done, Problem):
                    return done
                if ssh_verified(done.returncode, done.stdout):
                    return None
                said = said or (done.stderr or done.stdout).strip().splitlines()
            return Problem(why=f"the SSH signature does not verify for {principals[0]}: {said[-1] if said else '?'}")

    def _fingerprint(self, sig: Path, payload: bytes, home: Path) -> str:
        """The signing key's fingerprint, for the message only (the signature is not trusted by this)."""
        done = self._run([self.ssh_keygen, "-Y", "check-novalidate", "-n", "git", "-s", str(sig)], home, payload)
        if isinstance(done, Problem) or done.returncode != 0:
            return "(unreadable signature)"
        words = done.stdout.split()
        return next((w for w in words if w.startswith("SHA256:")), "(unknown key)")

    def _run(self, argv: list[str], home: Path, stdin: bytes = b"") -> subprocess.CompletedProcess[str] | Problem:
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home), "LC_ALL": "C"}
        try:
            done = subprocess.run(
                argv, input=stdin, capture_output=True, env=env, cwd=home, timeout=self.timeout_s, check=False
            )
        except FileNotFoundError:
            return Problem(why=f"{argv[0]} is not installed on the daemon's host", final=False)
        except subprocess.TimeoutExpired:
            return Problem(why=f"{argv[0]} did not answer within {self.timeout_s:g} s", final=False)
        except OSError as exc:
            return Problem(why=f"cannot run {argv[0]}: {exc}", final=False)
        return subprocess.CompletedProcess(
            argv, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        )


def _write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path
