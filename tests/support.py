"""Shared test helpers: run the real CLIs in subprocesses and read back what they left on disk.

A module of its own, imported as ``from support import ...``: ``from conftest import`` finds whichever
conftest.py was imported last (tests/ or tests/trm/), so a subset of the test files would not import.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from trm_cluster import wandb_files

REPO = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a child: no W&B credentials or settings leaking in, offline W&B."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SUBMITIT_"))}
    env.update(WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def cli(
    module: str, *args: str, cwd: Path, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"trm_cluster.{module}", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text())


def status_json(run_dir: Path, cwd: Path) -> dict[str, Any]:
    result = cli("status", str(run_dir), "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root and the sha256 of its bytes: 'nothing on disk changed' is equality."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def wandb_history(run_dir: Path) -> list[wandb_files.WandbSegment]:
    return [wandb_files.read_segment(p) for p in wandb_files.find_segments(run_dir)]


def assert_one_continuous_wandb_run(
    run_dir: Path, expected_steps: list[int]
) -> list[wandb_files.WandbSegment]:
    """All segments share the manifest's run id; together they hold each expected step exactly once."""
    segments = wandb_history(run_dir)
    run_id = manifest(run_dir)["wandb"]["run_id"]
    assert segments, "no .wandb files were written"
    # a file whose wandb-core died before its first flush holds only the header: no id, no rows
    assert {s.run_id for s in segments if s.run_id is not None or s.steps} == {run_id}
    steps = [step for s in segments for step in s.steps]
    assert len(steps) == len(set(steps)), f"duplicated W&B steps: {sorted(steps)}"
    assert sorted(steps) == expected_steps
    return segments
