"""Two ranks (``--tasks-per-node 2``, gloo) on the real local Slurm: both tasks get the USR2, they agree
to stop after the same step, rank 0 requeues the job, and the run ends bit-identical to the same two-rank
run uninterrupted (on the local executor: the executor does not change the math)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import torch
from support import assert_one_continuous_wandb_run, assert_same_state, assert_same_training_state, clean_env
from support import cli, manifest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

RUN = ("--preset", "regression", "--wandb-mode", "offline", "--tasks-per-node", "2")


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


def _rank1(run_dir: Path) -> dict:  # type: ignore[type-arg]
    (part,) = manifest(run_dir)["checkpoints"][-1]["parts"]
    return torch.load(run_dir / part["file"], weights_only=True)  # type: ignore[no-any-return]


def test_two_ranks_on_slurm_stop_together_requeue_and_end_bit_identical(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    done = cli("submit", *RUN, "--executor", "local", "--wait", "--run-dir", str(reference), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr

    run_dir = tmp_path / "run"
    submitted = cli(
        "submit", *RUN, "--executor", "slurm", "--partition", "gpu", "--cpus-per-task", "1",
        "--run-dir", str(run_dir), "--step-delay-s", "0.1", cwd=tmp_path,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    _wait(lambda: manifest(run_dir)["checkpoints"], "a first checkpoint")
    preempted = cli("preempt", str(run_dir), cwd=tmp_path)  # scancel --signal=USR2: every task gets it
    assert preempted.returncode == 0, preempted.stdout + preempted.stderr
    _wait(lambda: manifest(run_dir)["status"] in ("completed", "failed"), "the run to end", timeout=600)
    job = str(manifest(run_dir)["launch"]["job_id"])
    squeue = ["squeue", "-h", "-j", job]
    _wait(lambda: not subprocess.run(squeue, capture_output=True, text=True, env=clean_env()).stdout.strip(),
          "the job to leave the queue", timeout=60)  # fmt: skip

    data = manifest(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["preempted", "completed"], data["segments"]
    first, second = data["segments"]
    assert first["job_id"] == second["job_id"] and second["start_step"] == first["end_step"]
    assert_same_training_state(reference, run_dir, ignore=["meta.config.job.step_delay_s"])
    assert_same_state(_rank1(reference), _rank1(run_dir), ignore=("meta.run_uid",))
    assert len(assert_one_continuous_wandb_run(run_dir, list(range(5, 201, 5)))) == 2
