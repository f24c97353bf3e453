"""Running the real command line in the test's own process: `gitopsd.cli.main.main(argv)`, its output caught by
pytest's capsys. For tests that need the process itself (a spy on a module, a fake NVML); the others run
`gitopsd` as a subprocess."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from gitopsd.cli.main import main


class Invoked(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke(capsys: pytest.CaptureFixture[str], args: list[str]) -> Invoked:
    """Run `gitopsd ARGS` here; its exit status and what it wrote."""
    capsys.readouterr()  # what came before is not this command's
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return Invoked(code, out.out, out.err)
