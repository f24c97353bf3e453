"""TEMPORARY stand-in for the i15-data helper's sources (deleted before merging branch i15-data)."""

from __future__ import annotations

from pathlib import Path


def discover(state_dir: Path) -> dict[str, Path]:
    if (state_dir / "state.db").is_file():
        return {"default": state_dir}
    if not state_dir.is_dir():
        return {}
    return {p.name: p for p in sorted(state_dir.iterdir()) if (p / "state.db").is_file()}
