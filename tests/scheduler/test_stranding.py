"""Interruptions that used to strand a run (requeued or running forever, with no process left):
hit from the outside, as a user or a scheduler would, through the real CLI and the local executor."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
from support import (
    alive,
    assert_one_continuous_wandb_run,
    cli,
    manifest,
    open_segment_pid,
    start_local_run,
    wandb_history,
)


@pytest.mark.slow
def test_usr2_again_and_again_during_the_hand_over_still_requeues(workdir: Path) -> None:
    """A second USR2 after the segment closed (during submitit's requeue and the interpreter's exit,
    which resets Python handlers to "terminate") killed the exiting task: the controller never restarted
    it and the run stayed "requeued" with no process. Here USR2 keeps coming every millisecond until the
    process is gone (the exit skips the interpreter's teardown, so the window is tens of ms), and some
    arrive after the segment closed."""
    run_dir = workdir / "run"
    proc = start_local_run(workdir, run_dir, "--step-delay-s", "0.02", "--no-wandb")
    pid = open_segment_pid(run_dir)
    while not manifest(run_dir)["checkpoints"]:
        time.sleep(0.05)
    sent: list[float] = []
    while alive(pid):
        try:
            os.kill(pid, signal.SIGUSR2)
            sent.append(time.time())
        except ProcessLookupError:
            break
        time.sleep(0.001)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    data = manifest(run_dir)
    closed = datetime.fromisoformat(data["segments"][0]["end_time"]).timestamp()
    after_close = [t for t in sent if t > closed + 0.001]  # end_time has ms resolution
    assert after_close, (len(sent), closed)  # signals kept coming during the hand-over and the exit
    assert [s["end_reason"] for s in data["segments"]] == ["preempted", "completed"]
    assert data["status"] == "completed" and data["requeues"]["preempted"] == 1


@pytest.mark.slow
def test_a_kill_after_the_final_checkpoint_is_finished_by_the_resume(workdir: Path) -> None:
    """SIGKILL while the final evaluation runs (after the final checkpoint, before the segment closed)
    left status "running 200/200" and a resume that refused; W&B lacked the last rows and the eval."""
    run_dir = workdir / "run"
    proc = start_local_run(workdir, run_dir, "--eval-every", "0", "--eval-delay-s", "600")
    pid = open_segment_pid(run_dir)
    while not any(c["step"] == 200 for c in manifest(run_dir)["checkpoints"]):
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    killed = manifest(run_dir)
    assert killed["status"] == "running" and killed["segments"][-1]["end_reason"] is None

    resumed = cli("submit", "--resume", str(run_dir), "--executor", "local", "--wait", "--eval-delay-s", "0",
                  cwd=workdir)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    data = manifest(run_dir)
    assert data["status"] == "completed"
    assert [(s["start_step"], s["end_step"], s["end_reason"]) for s in data["segments"]] == [
        (0, 200, "killed"),
        (200, 200, "completed"),
    ]
    segments = assert_one_continuous_wandb_run(run_dir, list(range(5, 201, 5)))
    evals = [r["_step"] for s in segments for r in s.history if "eval/ema_mse" in r]
    assert evals == [200]
    assert len(wandb_history(run_dir)) == 2
