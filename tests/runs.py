"""What tests read back from a run directory."""

from __future__ import annotations

import json
from pathlib import Path


def step_losses(run_dir: Path) -> dict[int, float]:
    """The last recorded training loss of each step (a step re-run after recovery overwrites)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out
