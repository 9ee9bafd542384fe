"""The local executor requeues as often as Slurm would: submitit's own controller stops after 6 runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import cli, manifest

from trm_cluster.scheduler.executors import ExecutorOptions, make_executor

PREEMPTIONS = 7  # one more than submitit's controller reruns a task


@pytest.mark.slow
def test_seven_preemptions_on_the_local_executor_complete(workdir: Path) -> None:
    run_dir = workdir / "run"
    steps = 2 * PREEMPTIONS + 1  # the fewest steps a rehearsal of 7 preemptions allows
    # 8 processes: no wandb-core for each
    args = ("--preset", "regression", "--no-wandb", "--executor", "local", "--wait")
    args += ("--preemptions", str(PREEMPTIONS), "--steps", str(steps), "--run-dir", str(run_dir))
    result = cli("submit", *args, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    data = manifest(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["preempted"] * PREEMPTIONS + ["completed"]
    assert data["status"] == "completed"
    assert len({s["job_id"] for s in data["segments"]}) == 1  # requeued by one controller, not resubmitted


def test_a_crashing_task_is_not_rerun(tmp_path: Path) -> None:
    """Only a requeue (exit code 144) reruns a task, as in submitit; any other exit ends the job."""
    runs = tmp_path / "runs.txt"
    executor = make_executor("local", ExecutorOptions(executor="local", time_min=5), tmp_path / "logs")
    job = executor.submit(subprocess.run, ["sh", "-c", f"echo run >> {runs}; exit 3"], check=True)
    assert "CalledProcessError" in str(job.exception())  # waits for the controller to exit
    assert runs.read_text() == "run\n"
