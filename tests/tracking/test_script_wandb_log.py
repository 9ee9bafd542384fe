"""A script's own ``wandb.log(..., step=...)`` calls, left as they were, reach the run's one W&B run through
the session: its step rules, not the script's ``step=``; through a stop and a resume, every step once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import assert_one_continuous_wandb_run, clean_env

SCRIPT = """
import torch, wandb, trm_cluster
model = torch.nn.Linear(2, 2)
with trm_cluster.session(steps=6, log_every=1) as run:
    run.restore(model=model)
    for step in run.steps():
        wandb.log({"loss": float(step), "train/step": step}, step=100 * step)  # their own call, unchanged
"""


def test_a_scripts_wandb_log_reaches_the_one_run_at_the_sessions_steps(workdir: Path) -> None:
    script = workdir / "train.py"
    script.write_text(SCRIPT)
    run_dir = workdir / "run"
    env = clean_env(TRM_CLUSTER_RUN_DIR=str(run_dir), WANDB_MODE="offline", TRM_CLUSTER_STOP_AFTER="3")
    first = subprocess.run(
        [sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert first.returncode == 75, first.stdout + first.stderr
    del env["TRM_CLUSTER_STOP_AFTER"]
    second = subprocess.run(
        [sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stdout + second.stderr
    segments = assert_one_continuous_wandb_run(run_dir, [1, 2, 3, 4, 5, 6])
    rows = {
        step: row for segment in segments for step, row in zip(segment.steps, segment.history, strict=True)
    }
    assert [rows[s]["loss"] for s in range(1, 7)] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # step i's value at i + 1


def test_a_scripts_wandb_finish_inside_the_session_is_ignored_with_a_warning(workdir: Path) -> None:
    script = workdir / "train.py"
    script.write_text(
        SCRIPT.replace(
            "step=100 * step)", "step=100 * step)\n        if step == 2:\n            wandb.finish()"
        )
    )
    run_dir = workdir / "run"
    done = subprocess.run(
        [sys.executable, str(script)], cwd=workdir, capture_output=True, text=True,
        env=clean_env(TRM_CLUSTER_RUN_DIR=str(run_dir), WANDB_MODE="offline"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr  # its next wandb.log used to raise
    assert "wandb.finish() inside the session is ignored" in done.stderr
    segments = assert_one_continuous_wandb_run(run_dir, [1, 2, 3, 4, 5, 6])  # every row after it arrived
    assert len(segments) == 1
