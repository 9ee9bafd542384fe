"""Retries without crash loops, through both doorways (the Trainer protocol's job and a user's own loop):
a step that raised once is retried from the last checkpoint and the run ends as if it never failed; a
step that always raises stops the run as failed after --max-failures tries, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import assert_one_continuous_wandb_run, assert_same_training_state, cli, manifest

from trm_cluster.rundir.manifest import Segment
from trm_cluster.runtime.retries import failure_streak

FAST = ("--preset", "regression", "--executor", "debug")
FAILURE_FLAGS = ("meta.config.job.fail_at_step", "meta.config.job.fail_once_marker")


def test_a_step_that_fails_once_is_retried_from_the_last_checkpoint_and_ends_exact(workdir: Path) -> None:
    reference, run_dir = workdir / "reference", workdir / "run"
    done = cli("submit", *FAST, "--wandb-mode", "offline", "--run-dir", str(reference), cwd=workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    marker = workdir / "failed-once"
    result = cli("submit", *FAST, "--wandb-mode", "offline", "--run-dir", str(run_dir), "--fail-at-step", "120",
                 "--fail-once-marker", str(marker), cwd=workdir)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert marker.exists()  # it did fail
    assert (
        "[trm_cluster] step 120 failed (RuntimeError: rehearsed failure at step 120); retrying from the "
        "checkpoint at step 100 (failure 1 of 3 allowed in a row)"
    ) in result.stdout
    data = manifest(run_dir)
    assert data["status"] == "completed"
    failed, completed = data["segments"]
    assert (failed["end_reason"], failed["failed_step"], failed["start_step"]) == ("failed", 120, 0)
    assert "in train_step" in failed["message"]  # the traceback's last lines, not just the exception
    assert failed["message"].splitlines()[-1] == "RuntimeError: rehearsed failure at step 120"
    assert (completed["end_reason"], completed["start_step"]) == ("completed", 100)
    assert_same_training_state(reference, run_dir, ignore=FAILURE_FLAGS)
    assert_one_continuous_wandb_run(run_dir, list(range(5, 201, 5)))  # rows 105..120 not logged twice


def test_a_step_that_always_fails_stops_the_run_after_max_failures(workdir: Path) -> None:
    run_dir = workdir / "run"
    result = cli("submit", *FAST, "--no-wandb", "--run-dir", str(run_dir), "--fail-at-step", "70",
                 "--max-failures", "2", cwd=workdir)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    data = manifest(run_dir)
    assert data["status"] == "failed"
    segments = data["segments"]
    assert [(s["end_reason"], s["failed_step"], s["start_step"]) for s in segments] == [
        ("failed", 70, 0),
        ("failed", 70, 50),
    ]
    assert "not retried (--max-failures 2)" in segments[-1]["message"]
    assert "RuntimeError: rehearsed failure at step 70" in segments[-1]["message"]
    assert result.stdout.count("retrying from the checkpoint at step 50") == 1
    assert "[trm_cluster] step 70 failed 2 time(s) in a row (RuntimeError: rehearsed failure at step 70); " \
        "the run stops as failed (--max-failures 2)" in result.stdout  # fmt: skip
    assert f"python -m trm_cluster.submit --resume {run_dir}" in result.stdout


def test_max_failures_must_be_positive_and_nothing_is_written(workdir: Path) -> None:
    result = cli("submit", *FAST, "--no-wandb", "--run-dir", str(workdir / "run"), "--max-failures", "0",
                 cwd=workdir)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == "trm-submit: error: --max-failures must be >= 1, got 0"
    assert not (workdir / "run").exists()


SCRIPT = """
import os, sys, torch, trm_cluster
marker, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
with trm_cluster.session(steps=40, checkpoint_every=10, log_every=5) as run:
    run.restore(model=model, optimizer=optimizer)
    for step in run.steps():
        if step == 25 and not os.path.exists(marker):
            open(marker, "w").close()
            raise OSError(f"flaky storage at step {step}")
        x = torch.randn(8, 4)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log({"loss": loss.item()})
torch.save(model.state_dict(), out)
"""


def test_your_own_loop_shares_the_retry_path(workdir: Path) -> None:
    script = workdir / "train.py"
    script.write_text(SCRIPT)
    weights = {}
    for name, marker in (("never-failed", workdir / "exists"), ("failed-once", workdir / "marker")):
        if name == "never-failed":
            marker.touch()
        out = workdir / f"{name}.pt"
        result = cli("submit", "--script", str(script), "--executor", "debug", "--no-wandb", "--run-dir",
                     str(workdir / name), "--", str(marker), str(out), cwd=workdir)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        weights[name] = torch.load(out, weights_only=True)
    data = manifest(workdir / "failed-once")
    assert [(s["end_reason"], s["failed_step"], s["start_step"]) for s in data["segments"]] == [
        ("failed", 25, 0), ("completed", None, 20),
    ]  # fmt: skip
    assert "OSError: flaky storage at step 25" in data["segments"][0]["message"]
    for key, value in weights["never-failed"].items():
        assert torch.equal(value, weights["failed-once"][key]), key


def _segment(index: int, job: str, reason: str | None, failed_step: int | None) -> Segment:
    return Segment(index, job, None, 0, "h", 1, "local", "t", 0, end_reason=reason, failed_step=failed_step)


@pytest.mark.parametrize(
    ("history", "streak"),
    [
        ([], 0),
        ([("1", "failed", 7)], 1),
        ([("1", "failed", 7), ("1", "failed", 7)], 2),
        ([("1", "failed", 5), ("1", "failed", 7)], 1),  # progress in between: a fresh count
        ([("1", "failed", 7), ("1", "preempted", None), ("1", "failed", 7)], 1),
        ([("1", "failed", 7), ("2", "failed", 7)], 1),  # a new submission (--resume): a fresh count
        ([("1", "failed", 7), ("1", "failed", None)], 0),  # failed outside the loop: never retried
    ],
)
def test_the_failure_streak_counts_the_same_step_in_a_row_within_one_job(
    tmp_path: Path, history: list[tuple[str, str, int | None]], streak: int
) -> None:
    from support import new_run

    manifest_ = new_run(tmp_path / "run")
    with manifest_.update() as data:
        data.segments = [_segment(i, job, reason, step) for i, (job, reason, step) in enumerate(history)]
    assert failure_streak(manifest_.read()) == streak
