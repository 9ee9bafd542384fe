"""A researcher's own script (``submit --script``) on the real local Slurm: preempted on demand with
``python -m trm_cluster.preempt`` (``scancel --signal=USR2``), requeued by Slurm, exact at the end."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support import (
    REPO,
    assert_one_continuous_wandb_run,
    assert_same_state,
    assert_same_training_state,
    clean_env,
    cli,
    manifest,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPT = REPO / "trm_cluster" / "examples" / "train_script.py"
STEPS = 200


def _wait(predicate, what: str, timeout: float = 300) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def _squeue(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, env=clean_env()).stdout


def test_own_script_preempted_on_slurm_requeues_and_ends_bit_identical(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--max-steps", str(STEPS), "--out", str(tmp_path / "ref.pt")],
        cwd=tmp_path, env=clean_env(TRM_CLUSTER_RUN_DIR=str(reference), WANDB_MODE="offline"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    run_dir = tmp_path / "run"
    submitted = cli(
        "submit", "--script", str(SCRIPT), "--executor", "slurm", "--partition", "gpu", "--cpus-per-task", "2",
        "--wandb-mode", "offline", "--run-dir", str(run_dir), "--checkpoint-every", "50",
        "--script-args", "--max-steps", str(STEPS), "--out", str(tmp_path / "final.pt"), "--sleep-per-step", "0.1",
        cwd=tmp_path,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    _wait(lambda: manifest(run_dir)["checkpoints"], "a first checkpoint")
    preempted = cli("preempt", str(run_dir), cwd=tmp_path)
    assert preempted.returncode == 0, preempted.stdout + preempted.stderr
    _wait(lambda: manifest(run_dir)["status"] in ("completed", "failed"), "the run to end", timeout=600)
    job = str(manifest(run_dir)["launch"]["job_id"])
    _wait(lambda: not _squeue(job).strip(), f"job {job} to leave the queue", timeout=60)

    data = manifest(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["preempted", "completed"], data["segments"]
    first, second = data["segments"]
    assert first["job_id"] == second["job_id"] and second["restart_count"] == first["restart_count"] + 1
    assert second["start_step"] == first["end_step"] >= 50
    assert_same_training_state(reference, run_dir, ignore=("meta.config", "meta.workload"))
    # the model the script saved after its loop (torch.save's archive names differ with the file name)
    assert_same_state(
        torch.load(tmp_path / "ref.pt", weights_only=True),
        torch.load(tmp_path / "final.pt", weights_only=True),
    )
    assert_one_continuous_wandb_run(run_dir, list(range(10, STEPS + 1, 10)))
    log = "".join(p.read_text() for p in (run_dir / "logs").glob("*_log.out"))
    assert log.count("final evaluation:") == 1
