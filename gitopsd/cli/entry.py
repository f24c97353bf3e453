"""The `gitopsd` console script and `python -m gitopsd`: the command line imported with the cyclic collector off.

Importing the command line makes thousands of objects that live as long as the process (modules, classes,
functions, enums) and no garbage cycles worth finding, yet every 700 of them start a young collection that scans
them again: a dozen collections, about a tenth of `gitopsd --help`. The collector is back on before the command
runs, so every command, the daemon's first of all, collects as it always did.
"""

from __future__ import annotations

import gc

__all__ = ["main"]


def main() -> None:
    """Import the command line with the collector off, then run it with the collector as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        from gitopsd.cli.main import main as run
    finally:
        if enabled:
            gc.enable()
    run()
