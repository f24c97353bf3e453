"""The CI files `gitopsd init` writes: valid for each forge's published schema, safe on fork pull requests, never
written over a user's file, and, run step by step as GitHub Actions would, they validate, plan, post ONE plan
comment and fail the check on an invalid spec.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitopsd.cli.prcomment import MARKER
from gitopsd.cli.scaffold import CI_FILES, ci_file, gitopsd_version, init_demo, write_ci_files
from tests.conftest import GIT_ENV, GitRepo, gitopsd
from tests.fakeforge import TOKEN, FakeForge, serve

CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
SCHEMAS = {".github/workflows/gitopsd.yml": "vendor.github-workflows", ".gitlab-ci.yml": "vendor.gitlab-ci"}


def check_schema(path: Path, schema: str) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with its vendored copy of the forge's schema; a proxy that refuses every connection
    proves that nothing is downloaded."""
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    return subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip


@pytest.mark.parametrize("rel", sorted(CI_FILES))
def test_the_ci_files_pass_the_forges_published_schema(tmp_path: Path, rel: str) -> None:
    init_demo(tmp_path / "repo")
    path = tmp_path / "repo" / rel
    done = check_schema(path, SCHEMAS[rel])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok -- validation done" in done.stdout
    # and the check can fail: a misspelt key is caught
    broken = tmp_path / ("broken.yml" if "github" in rel else "broken-gitlab-ci.yml")
    text = path.read_text()
    broken.write_text(text.replace("runs-on:", "runs_on:") if "github" in rel else text.replace("script:", "scrpt:"))
    assert check_schema(broken, SCHEMAS[rel]).returncode == 1


def test_the_github_workflow_plans_pull_requests_with_a_read_only_checkout() -> None:
    flow = yaml.safe_load(ci_file(".github/workflows/gitopsd.yml"))
    triggers = flow[True]  # YAML 1.1 reads the key `on` as True
    assert list(triggers) == ["pull_request"], "never pull_request_target: a fork's code with a write token"
    assert flow["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert "github.event.pull_request.number" in flow["concurrency"]["group"]
    steps = flow["jobs"]["plan"]["steps"]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    assert checkout["with"]["persist-credentials"] is False
    assert f"gitopsd=={gitopsd_version()}" in flow["jobs"]["plan"]["env"]["GITOPSD_INSTALL"]
    for step in steps:
        assert "${{" not in step.get("run", ""), f"no expression in a script (injection): {step['name']}"
    plan = next(s for s in steps if s.get("id") == "plan")["run"]
    assert '--state-dir "$(mktemp -d)" plan --repo . --base "origin/$GITHUB_BASE_REF" --branch HEAD' in plan
    assert "--format markdown" in plan


def test_the_gitlab_job_runs_on_merge_requests_with_the_whole_history() -> None:
    job = yaml.safe_load(ci_file(".gitlab-ci.yml"))["gitopsd-plan"]
    assert job["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert job["variables"]["GIT_DEPTH"] == "0"
    assert job["variables"]["GITOPSD_INSTALL"] == f"gitopsd=={gitopsd_version()}"
    script = "\n".join(job["script"])
    assert "refs/remotes/origin/$CI_MERGE_REQUEST_TARGET_BRANCH_NAME" in script
    assert '--base "origin/$CI_MERGE_REQUEST_TARGET_BRANCH_NAME" --branch HEAD --format markdown' in script
    assert "gitopsd comment --forge gitlab" in script


def test_ci_only_adds_the_ci_files_to_an_existing_repository_and_never_overwrites(tmp_path: Path) -> None:
    repo = tmp_path / "existing"
    (repo / ".github" / "workflows").mkdir(parents=True)
    (repo / ".gitlab-ci.yml").write_text("mine: {script: [true]}\n")
    done = gitopsd(tmp_path / "state", "init", "--ci-only", str(repo))
    assert f"wrote {repo}/.github/workflows/gitopsd.yml" in done.stdout
    assert f"skipped {repo}/.gitlab-ci.yml: it exists" in done.stdout
    assert (repo / ".gitlab-ci.yml").read_text() == "mine: {script: [true]}\n"
    assert (repo / ".github/workflows/gitopsd.yml").read_text() == ci_file(".github/workflows/gitopsd.yml")
    again = gitopsd(tmp_path / "state", "init", "--ci-only", str(repo))
    assert "wrote" not in again.stdout
    assert again.stdout.count("skipped") == 2
    missing = gitopsd(tmp_path / "state", "init", "--ci-only", str(tmp_path / "nowhere"), check=False)
    assert missing.returncode == 1
    assert "is not a directory" in missing.stderr


def test_ci_only_does_not_write_through_a_symbolic_link(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".gitlab-ci.yml").symlink_to(tmp_path / "outside.yml")
    assert write_ci_files(repo).skipped == (".gitlab-ci.yml",)
    assert not (tmp_path / "outside.yml").exists()


# -- the GitHub workflow, run step by step ------------------------------------------------------------------


class Actions:
    """Just enough of a GitHub Actions runner to run the workflow's own steps: `run:` scripts under bash -eo
    pipefail, `env:` with the few expressions the workflow uses, `if:`, `continue-on-error`, $GITHUB_ENV,
    $GITHUB_STEP_SUMMARY. An expression it does not know fails the test, so the template cannot drift from
    what is tested."""

    def __init__(self, workdir: Path, env: dict[str, str], secrets: dict[str, str], fork: bool) -> None:
        self.workdir, self.env, self.secrets, self.fork = workdir, env, secrets, fork
        self.outcomes: dict[str, str] = {}
        self.failed = False
        self.log: list[str] = []

    def expression(self, expr: str) -> str:
        expr = expr.strip()
        if expr.startswith("vars.GITOPSD_INSTALL || "):
            return expr.split("|| ", 1)[1].strip("'")
        if expr.startswith("secrets."):
            return self.secrets.get(expr.removeprefix("secrets."), "")
        if match := re.fullmatch(r"steps\.(\w+)\.outcome", expr):
            return self.outcomes[match.group(1)]
        raise AssertionError(f"the test runner does not know the expression {expr!r}")

    def condition(self, cond: str | None) -> bool:
        same_repo = "github.event.pull_request.head.repo.full_name == github.repository"
        other_repo = "github.event.pull_request.head.repo.full_name != github.repository"
        known = {
            None: not self.failed,
            "always()": True,
            f"always() && {same_repo}": not self.fork,
            f"always() && {other_repo}": self.fork,
        }
        assert cond in known, f"the test runner does not know the condition {cond!r}"
        return known[cond]

    def run(self, steps: list[dict[str, Any]], replace: dict[str, str]) -> None:
        github_env = Path(self.env["GITHUB_ENV"])
        for step in steps:
            if "uses" in step or step.get("id") == "install":  # checkout, setup-python, pip: done by the test
                continue
            if not self.condition(step.get("if")):
                self.log.append(f"skipped: {step['name']}")
                continue
            env = {**self.env, **dict(line.split("=", 1) for line in github_env.read_text().splitlines() if line)}
            for name, value in step.get("env", {}).items():
                env[name] = re.sub(r"\$\{\{(.*?)\}\}", lambda m: self.expression(m.group(1)), str(value))
            script = replace.get(step.get("id", ""), step["run"])
            done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                                  cwd=self.workdir, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
            self.log.append(f"{step['name']}: exit {done.returncode}\n{done.stdout}{done.stderr}")
            if "id" in step:
                self.outcomes[step["id"]] = "success" if done.returncode == 0 else "failure"
            if done.returncode != 0 and not step.get("continue-on-error"):
                self.failed = True


def plan_has_markdown() -> bool:
    done = gitopsd(Path("/nonexistent"), "plan", "--help")
    return "--format" in done.stdout


@pytest.fixture
def pull_request(tmp_path: Path) -> GitRepo:
    """A clone of the demo repository on the branch of a pull request against main, as actions/checkout with
    fetch-depth 0 leaves it: origin/main is there."""
    init_demo(tmp_path / "upstream")
    subprocess.run(["git", "clone", "-q", str(tmp_path / "upstream"), str(tmp_path / "work")], check=True)
    work = GitRepo(tmp_path / "work")
    work.git("checkout", "-q", "-b", "faster")
    work.edit("models/blobs.yaml", "--epochs 40", "--epochs 60")
    work.commit("Train longer")
    return work


def run_workflow(tmp_path: Path, repo: GitRepo, fake: FakeForge, *, fork: bool = False) -> Actions:
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "gitopsd").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gitopsd "$@"\n')
    (shim / "gitopsd").chmod(0o755)
    temp = tmp_path / "runner-temp"
    temp.mkdir(exist_ok=True)
    event = tmp_path / "event.json"
    head = "someone/demo" if fork else "ml/demo"
    gitea = {"GITEA_ACTIONS": "true"} if fake.forge == "gitea" else {}
    event.write_text(json.dumps({"number": 7, "pull_request": {"number": 7, "head": {"repo": {"full_name": head}},
                                                              "base": {"ref": "main"}}}))  # fmt: skip
    (temp / "env").write_text("")
    env = {
        "PATH": f"{shim}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "GITHUB_ACTIONS": "true",
        "GITHUB_API_URL": fake.api,
        "GITHUB_SERVER_URL": fake.url,
        "GITHUB_REPOSITORY": "ml/demo",
        "GITHUB_EVENT_NAME": "pull_request",
        "GITHUB_EVENT_PATH": str(event),
        "GITHUB_BASE_REF": "main",
        "GITHUB_HEAD_REF": "faster",
        "GITHUB_RUN_ID": "99",
        "GITHUB_ENV": str(temp / "env"),
        "GITHUB_STEP_SUMMARY": str(temp / "summary.md"),
        "RUNNER_TEMP": str(temp),
        "GITOPSD_STATE_DIR": str(tmp_path / "unused-state"),
        **gitea,
        **GIT_ENV,
    }
    flow = yaml.safe_load((repo.path / ".github/workflows/gitopsd.yml").read_text())
    actions = Actions(repo.path, env, {"GITHUB_TOKEN": TOKEN}, fork)
    replace = {}
    if not plan_has_markdown():  # `plan --format markdown` arrives with the i14-plan branch: stand in for it
        replace["plan"] = f"printf '%s\\n' '{MARKER}' '## stand-in plan' > \"$RUNNER_TEMP/plan.md\""
    actions.run(flow["jobs"]["plan"]["steps"], replace)
    return actions


def test_the_workflow_posts_one_plan_comment_and_passes_a_valid_change(tmp_path: Path, pull_request: GitRepo) -> None:
    with serve(FakeForge(forge="github", me="github-actions[bot]", app_token=True)) as fake:
        first = run_workflow(tmp_path, pull_request, fake)
        assert not first.failed, "\n".join(first.log)
        assert first.outcomes == {"validate": "success", "plan": "success"}
        pull_request.edit("models/blobs.yaml", "--epochs 60", "--epochs 80")
        pull_request.commit("Train longer still")
        second = run_workflow(tmp_path, pull_request, fake)
        assert not second.failed, "\n".join(second.log)
        assert len(fake.comments) == 1, "one comment, edited on the second push"
        body = fake.bodies()[0]
    assert body.startswith(MARKER + "\n")
    assert "<details><summary>Output of <code>validate</code></summary>" in body
    assert ".: valid; 1 model(s): blobs" in body
    assert [s.method for s in fake.seen if s.method != "GET"] == ["POST", "PATCH"]
    assert (tmp_path / "runner-temp" / "summary.md").read_text().startswith(MARKER)


def test_gitea_actions_run_the_same_workflow_against_the_gitea_api(tmp_path: Path, pull_request: GitRepo) -> None:
    with serve(FakeForge(forge="gitea", me="gitea-actions")) as fake:
        for _ in range(2):
            actions = run_workflow(tmp_path, pull_request, fake)
            assert not actions.failed, "\n".join(actions.log)
        assert len(fake.comments) == 1
        assert [s.method for s in fake.seen if s.method != "GET"] == ["POST", "PATCH"]
        assert all(s.path.startswith("/api/v1/") for s in fake.seen)


def test_the_workflow_fails_an_invalid_spec_and_says_why_in_the_comment(tmp_path: Path, pull_request: GitRepo) -> None:
    pull_request.edit("models/blobs.yaml", "workdir: src", "workdir: nowhere")
    pull_request.commit("Break the workdir")
    with serve(FakeForge(forge="github", me="github-actions[bot]", app_token=True)) as fake:
        actions = run_workflow(tmp_path, pull_request, fake)
        body = fake.bodies()[0]
    assert actions.failed, "the check fails, so branch protection blocks the merge"
    assert actions.outcomes["validate"] == "failure"
    assert "models/blobs.yaml" in body and "spec.train.workdir" in body
    assert "validate: failure" in actions.log[-1]


def test_a_fork_pull_request_gets_no_comment_and_a_warning(tmp_path: Path, pull_request: GitRepo) -> None:
    with serve(FakeForge(forge="github", app_token=True)) as fake:
        actions = run_workflow(tmp_path, pull_request, fake, fork=True)
        assert fake.seen == [], "no request with the fork's read-only token"
    assert not actions.failed
    assert "skipped: Post the plan on the pull request" in actions.log
    assert any("::warning title=gitopsd::this pull request comes from a fork" in line for line in actions.log)


@pytest.mark.skipif(not plan_has_markdown(), reason="needs `gitopsd plan --format markdown` (branch i14-plan)")
def test_the_workflow_runs_the_real_plan_and_posts_it(tmp_path: Path, pull_request: GitRepo) -> None:
    with serve(FakeForge(forge="github", me="github-actions[bot]", app_token=True)) as fake:
        actions = run_workflow(tmp_path, pull_request, fake)
        body = fake.bodies()[0]
    assert not actions.failed, "\n".join(actions.log)
    assert body.startswith(MARKER + "\n")
    assert "blobs" in body
    assert "stand-in" not in body


# -- the GitLab job, run as the runner does: its script lines in one shell, under set -eo pipefail -------------


def run_gitlab_job(
    tmp_path: Path, repo: GitRepo, fake: FakeForge, *, token: bool = True
) -> subprocess.CompletedProcess[str]:
    job = yaml.safe_load((repo.path / ".gitlab-ci.yml").read_text())["gitopsd-plan"]
    lines = [line for line in job["script"] if not line.startswith("python -m pip install")]
    if not plan_has_markdown():  # `plan --format markdown` arrives with the i14-plan branch: stand in for it
        stand_in = f"plan=0; printf '%s\\n' '{MARKER}' '## stand-in plan' > \"$out/plan.md\""
        lines = [stand_in if " plan --repo " in line else line for line in lines]
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "gitopsd").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gitopsd "$@"\n')
    (shim / "gitopsd").chmod(0o755)
    env = {
        "PATH": f"{shim}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        **{name: str(value) for name, value in job["variables"].items()},
        "GITLAB_CI": "true",
        "CI_PIPELINE_SOURCE": "merge_request_event",
        "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main",
        "CI_MERGE_REQUEST_IID": "7",
        "CI_PROJECT_ID": "42",
        "CI_API_V4_URL": fake.api,
        "CI_JOB_URL": f"{fake.url}/ml/demo/-/jobs/5",
        "CI_JOB_TOKEN": "job-token-cannot-write-notes",
        "GITOPSD_STATE_DIR": str(tmp_path / "unused-state"),
        **GIT_ENV,
    }
    if token:
        env["GITOPSD_GITLAB_TOKEN"] = TOKEN
    script = "set -eo pipefail\n" + "\n".join(lines)
    return subprocess.run(["bash", "--noprofile", "--norc", "-c", script], cwd=repo.path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_the_gitlab_job_posts_one_note_and_fails_an_invalid_spec(tmp_path: Path, pull_request: GitRepo) -> None:
    with serve(FakeForge(forge="gitlab")) as fake:
        good = run_gitlab_job(tmp_path, pull_request, fake)
        assert good.returncode == 0, good.stdout + good.stderr
        pull_request.edit("models/blobs.yaml", "workdir: src", "workdir: nowhere")
        pull_request.commit("Break the workdir")
        bad = run_gitlab_job(tmp_path, pull_request, fake)
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "gitopsd: validate exited 1" in bad.stdout
        assert len(fake.comments) == 1, "one note, edited on the second push"
        assert "spec.train.workdir" in fake.bodies()[0]
        assert [s.method for s in fake.seen if s.method != "GET"] == ["POST", "PUT"]


def test_the_gitlab_job_without_a_token_still_checks_and_says_it_could_not_post(
    tmp_path: Path, pull_request: GitRepo
) -> None:
    with serve(FakeForge(forge="gitlab")) as fake:
        done = run_gitlab_job(tmp_path, pull_request, fake, token=False)
        assert fake.seen == []
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CI_JOB_TOKEN cannot write merge request notes" in done.stderr
    assert "the plan could not be posted" in done.stdout
