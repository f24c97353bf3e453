"""The repository the browser tests look at, built with the real product: a Git repository of models, trained
by `gitopsd reconcile` with the local backend into a state directory that `gitopsd ui` then serves.

What it holds, one model per scenario of tests/browser:
- `blobs`: the demo model of `gitopsd init`, Ready at v1, alias `production: 1`;
- `flat`: a training whose loss never improves, stopped by its plateau rule (patience 2) after a few reports;
- `blobs-tuned`: fine-tuned from `blobs@production` (`base:`), so its version's lineage has a base;
- `strict`: trains fine but its gate `accuracy >= 1.01` can never pass: the run fails on the gate;
- `hostile`: its team label and its training's output carry HTML (`<img src=x onerror=...>`) that the page must
  show as text; its training fails after writing a metrics line under a hostile name;
- `live` (added by `start_live`): a training that writes a metrics line every 0.3 s for about 20 s, started by
  `gitopsd reconcile` without `--wait`, so that a test can watch its curve grow.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gitopsd.cli.scaffold import init_demo
from tests.conftest import GIT_ENV, GitRepo

REPOSITORY = "demo"  # `gitopsd ui` names the one repository of a state directory after its URL's last component
HOSTILE = "<img src=x onerror=document.title='pwned'>"
MODEL = "models/blobs.yaml"

LIVE_TRAIN = '''"""Report a metrics line every 0.3 s for about 20 s, so a browser can watch the curve grow."""
import json
import os
import time
from pathlib import Path

out = Path(os.environ["GITOPSD_OUTPUT_DIR"])
metrics = Path(os.environ["GITOPSD_METRICS_FILE"])
for step in range(1, 68):
    with metrics.open("a") as handle:
        handle.write(json.dumps({"step": step, "loss": 1.0 / step, "accuracy": 1.0 - 1.0 / (step + 1)}) + "\\n")
    time.sleep(0.3)
(out / "model.json").write_text("{}")
'''

FLAT_TRAIN = '''"""A loss that never improves, one report every 0.25 s for at most 15 s: the plateau rule stops it."""
import json
import os
import time
from pathlib import Path

out = Path(os.environ["GITOPSD_OUTPUT_DIR"])
for epoch in range(1, 61):
    with Path(os.environ["GITOPSD_METRICS_FILE"]).open("a") as handle:
        handle.write(json.dumps({"epoch": epoch, "loss": 0.5, "accuracy": 0.5}) + "\\n")
    (out / "model.json").write_text("{}")
    time.sleep(0.25)
'''

HOSTILE_TRAIN = f'''"""Write a metrics line under a hostile name, print HTML, and fail."""
import json
import os
import sys

with open(os.environ["GITOPSD_METRICS_FILE"], "a") as handle:
    handle.write(json.dumps({{"step": 1, "loss": 0.5, {HOSTILE!r}: 1}}) + "\\n")
print({HOSTILE!r}, file=sys.stderr)
sys.exit(3)
'''


def gitopsd(state_dir: Path, *args: str, timeout: float = 120, codes: tuple[int, ...] = (0,)) -> str:
    """Run the real `gitopsd` command line; its output, or an AssertionError with it when it exits otherwise than
    with one of `codes`."""
    env = {**os.environ, **GIT_ENV, "GITOPSD_STATE_DIR": str(state_dir)}
    done = subprocess.run([sys.executable, "-m", "gitopsd", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip
    if done.returncode not in codes or "Traceback" in done.stderr:
        raise AssertionError(f"gitopsd {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _variant(repo: GitRepo, name: str, *, command: str | None = None, gates: str | None = None,
             team: str | None = None, workdir: str | None = None) -> None:  # fmt: skip
    """A copy of the demo model under another name, with some of its fields replaced."""
    text = repo.read(MODEL).replace("name: blobs", f"name: {name}").replace("    production: 1\n", "")
    text = text.replace("  aliases:\n  train:", "  train:")
    if command is not None:
        text = text.replace("command: python3 train.py --epochs 40 --lr 0.5", f"command: {command}")
    if gates is not None:
        text = text.replace("  validate:\n    - accuracy >= 0.9\n    - loss < 0.5\n", gates)
    if team is not None:
        text = text.replace("team: demo", f"team: {team}")
    if workdir is not None:
        text = text.replace("workdir: src", f"workdir: {workdir}")
    repo.write(f"models/{name}.yaml", text)


def build(root: Path) -> tuple[GitRepo, Path]:
    """The repository at root/demo, reconciled until settled into root/state."""
    repo = GitRepo(root / REPOSITORY)
    init_demo(repo.path)
    repo.edit(MODEL, "spec:\n  train:", "spec:\n  aliases:\n    production: 1\n  train:")
    _variant(repo, "strict", gates="  validate:\n    - accuracy >= 1.01\n")
    _variant(repo, "hostile", team=f'"{HOSTILE}"', command="python3 hostile.py", workdir="hostile", gates="")
    repo.write("hostile/hostile.py", HOSTILE_TRAIN)
    _variant(repo, "flat", gates="", command="python3 flat.py", workdir="flat")
    flat = repo.read("models/flat.yaml").replace("patience: 5, min_delta: 0.0001", "patience: 2, min_delta: 0.01")
    repo.write("models/flat.yaml", flat)
    repo.write("flat/flat.py", FLAT_TRAIN)
    tuned = repo.read(MODEL).replace("name: blobs", "name: blobs-tuned")
    tuned = tuned.replace("  aliases:\n    production: 1\n", "  base: blobs@production\n")
    repo.write("models/blobs-tuned.yaml", tuned.replace("team: demo", "team: tuning"))
    repo.commit("Models for the browser tests")
    state = root / "state"
    # strict fails its gate, on purpose: --wait ends with exit 1, saying so
    for args in (["--repo", str(repo.path)], []):  # the base registers in the first pass; the tuned in the second
        gitopsd(state, "reconcile", *args, "--wait", "--timeout", "120", codes=(1,))
    return repo, state


def start_live(repo: GitRepo, state: Path) -> None:
    """Add the `live` model and start its training with one pass that does not wait for it."""
    _variant(repo, "live", command="python3 live.py", workdir="live", gates="  validate:\n    - accuracy >= 0.5\n")
    repo.write("models/live.yaml", re.sub(r"  data:\n(    .*\n)+", "", repo.read("models/live.yaml")))
    repo.write("live/live.py", LIVE_TRAIN)
    repo.commit("A training that takes 20 s")
    gitopsd(state, "reconcile")


@dataclass
class UiServer:
    """A real `gitopsd ui` process on a fixed port, which a test may stop and start again."""

    state: Path
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> None:
        env = {**os.environ, "GITOPSD_STATE_DIR": str(self.state)}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gitopsd", "--state-dir", str(self.state), "ui", "--listen",
                 f"127.0.0.1:{self.port}"], env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/ui/api/version", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"gitopsd ui did not answer on {self.url}:\n{self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
