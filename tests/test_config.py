"""The daemon configuration: strict TOML, errors that name the TOML path, secrets only by reference."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from gitopsd.daemon.config import apply_environment, load_config, resolve_secret
from gitopsd.errors import PermanentError

BASE = """
state_dir = "/var/lib/gitopsd"
[[repositories]]
name = "ml"
url = "https://git.example.org/ml.git"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gitopsd.toml"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, BASE))
    repo = config.repositories[0]
    assert (repo.poll_interval, repo.branch, config.http.address()) == (60, None, ("127.0.0.1", 9090))
    assert config.state_dir_of(repo) == Path("/var/lib/gitopsd/ml")


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ('poll_interval = "soon"', "repositories[0].poll_interval"),
        ('pol_interval = "5m"', "repositories[0].pol_interval"),
        ('[repositories.webhooks]\ngithub = "hunter2"', "repositories[0].webhooks.github"),
    ],
)
def test_errors_name_the_toml_path(tmp_path: Path, extra: str, where: str) -> None:
    with pytest.raises(PermanentError, match=f"gitopsd.toml: {re.escape(where)}"):
        load_config(_write(tmp_path, BASE + extra + "\n"))


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (BASE + 'pol_interval = "5m"\n', "repositories[0].pol_interval: unknown key (did you mean 'poll_interval'?)"),
        ('[backend.local]\ntype = "local"\n', "backend: unknown key (did you mean 'backends'?)"),
        ("[http]\nlisten = '127.0.0.1:9'\nzzz = 1\n", "http.zzz: unknown key\n"),
        (BASE.replace('"/var/lib/gitopsd"', '"state"'), "state_dir: 'state': expected an absolute path"),
        ('data_roots = ["data"]\n' + BASE, "data_roots[0]: 'data': expected an absolute path\n"),
        (BASE + 'data_roots = ["/data"]\n', "repositories[0].data_roots: not a key of this table (keys after"),
    ],
)
def test_a_mistake_is_said_in_the_operators_words(tmp_path: Path, text: str, said: str) -> None:
    """A typo gets the nearest known key, and a check's own message comes without pydantic's "Value error, "."""
    with pytest.raises(PermanentError) as caught:
        load_config(_write(tmp_path, text))
    assert f"gitopsd.toml: {said}" in str(caught.value) + "\n"


def test_a_plain_secret_is_refused_and_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as raised:
        load_config(_write(tmp_path, BASE + '[repositories.webhooks]\ngithub = "hunter2"\n'))
    assert "hunter2" not in str(raised.value)


def test_duplicate_repository_names_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="used twice"):
        load_config(_write(tmp_path, BASE + BASE.split("\n", 2)[2]))
    with pytest.raises(PermanentError, match="invalid TOML"):
        load_config(_write(tmp_path, "state_dir = \n"))


def test_secret_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret").write_text("from-file\n")
    monkeypatch.setenv("HOOK", "from-env")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hook").write_text("from-credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert resolve_secret(f"file:{tmp_path / 'secret'}") == b"from-file"
    assert resolve_secret("env:HOOK") == b"from-env"
    assert resolve_secret("credential:hook") == b"from-credential"
    with pytest.raises(PermanentError, match="env:MISSING: the variable is not set"):
        resolve_secret("env:MISSING")
    with pytest.raises(PermanentError, match="not a credential name"):
        resolve_secret("credential:../etc/passwd")


def test_environment_for_backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "aws").write_text("[default]\n")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.setenv("GITOPSD_SHARED_STATE_DIR", "restored after the test")
    text = BASE + f'[environment]\nSLURM_CONF = "/etc/slurm/slurm.conf"\nAWS_TOKEN = "file:{tmp_path / "aws"}"\n'
    apply_environment(load_config(_write(tmp_path, text)))
    assert os.environ["SLURM_CONF"] == "/etc/slurm/slurm.conf"
    assert os.environ["AWS_TOKEN"] == "[default]"
    shared = os.environ["GITOPSD_SHARED_STATE_DIR"]
    assert shared == str(load_config(_write(tmp_path, text)).state_dir), "one lease book for all repositories"
    monkeypatch.delenv("AWS_TOKEN")


def test_signed_commits_are_an_operator_setting_per_repository(tmp_path: Path) -> None:
    signers = tmp_path / "allowed_signers"
    config = load_config(_write(tmp_path, BASE + f'[repositories.verify]\nallowed_signers = "{signers}"\n'))
    verify = config.repositories[0].verify
    assert verify is not None and verify.policy().allowed_signers == signers
    assert load_config(_write(tmp_path, BASE)).repositories[0].verify is None, "no check unless the operator asks"
    with pytest.raises(PermanentError, match="needs allowed_signers, gpg_keyring or both"):
        load_config(_write(tmp_path, BASE + "[repositories.verify]\nmax_commits = 5\n"))
    with pytest.raises(PermanentError, match="is not a full commit id"):
        load_config(_write(tmp_path, BASE + f'[repositories.verify]\ngpg_keyring = "{signers}"\nsince = "HEAD"\n'))


def test_output_limits_are_an_operator_setting(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, BASE + "[output_limits]\nmetrics_bytes = 1048576\n"))
    assert config.output_limits.limits().metrics_bytes == 1 << 20
    assert load_config(_write(tmp_path, BASE)).output_limits.limits().artifact_bytes == 100 << 30
    with pytest.raises(PermanentError, match=r"output_limits.artifact_files"):
        load_config(_write(tmp_path, BASE + "[output_limits]\nartifact_files = 0\n"))


def test_commit_url_is_an_http_link_template_with_the_commit(tmp_path: Path) -> None:
    link = "https://github.com/ml-team/models/commit/{commit}"
    config = load_config(_write(tmp_path, BASE + f'commit_url = "{link}"\n'))
    assert config.repositories[0].commit_url == link
    assert load_config(_write(tmp_path, BASE)).repositories[0].commit_url is None, "no link unless configured"


@pytest.mark.parametrize(
    ("template", "said"),
    [
        ("https://github.com/org/models/commit/", "write {commit} where the commit goes"),
        ("ftp://host/{commit}", "expected an http(s) URL"),
        ("javascript:alert(1)//{commit}", "expected an http(s) URL"),
        ("/relative/{commit}", "expected an http(s) URL"),
        ("https://host/{commit}/{0.__class__}", "no other { or }"),
        ("https://user:pass@host/{commit}", "no credentials"),
        ("https://host/{commit} x", "no spaces"),
    ],
)
def test_a_bad_commit_url_is_refused_naming_its_key(tmp_path: Path, template: str, said: str) -> None:
    with pytest.raises(PermanentError) as caught:
        load_config(_write(tmp_path, BASE + f'commit_url = "{template}"\n'))
    assert "repositories[0].commit_url" in str(caught.value)
    assert said in str(caught.value)
