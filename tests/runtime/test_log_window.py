"""What reaches W&B from a loop's ``run.log`` calls: one row per log_every window, reduced by last or
mean, diagnostics logged only when ``run.will_log``, rows at once with ``log_now``, the 0-based step
convention, and a window cut by a stop that resumes into the same row. In this process, W&B disabled:
the rows are read from the checkpoint's journal, which is what the tracker hands to W&B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from trm_cluster.core.job_context import JobContext
from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.rundir.creation import create_script_run
from trm_cluster.runtime.plan import SegmentEnded, SessionPlan
from trm_cluster.runtime.session import Session
from trm_cluster.wandb.tracker import WandbTracker

TIMINGS = {"trainer/steps_per_s"}


def _train(run_dir: Path, stop_after: int | None = None, **settings: Any) -> None:
    if not (run_dir / "manifest.json").exists():
        wandb = WandbOptions(mode="disabled")
        create_script_run(run_dir, Path(__file__), [], {}, wandb=wandb)
    weight = torch.zeros(1)
    plan = SessionPlan(run_dir, JobContext.detect(), quiet=True, stop_after=stop_after)
    with Session(plan, {"steps": 7, "log_every": 3, "checkpoint_every": 0, **settings}) as run:
        run.restore(weight=weight)
        for step in run.steps():
            weight += 1
            run.log({"loss": float(step)})
            if run.will_log:
                run.log({"diagnostic": 100.0 + step})
            if step == 1:
                run.log({"rare": 1.0})
            if step == 4:
                run.log_now({"val": 4.0})


def _rows(run_dir: Path) -> dict[int, dict[str, float]]:
    files = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    journal = torch.load(files[-1], weights_only=True)["tracking"]["journal"]
    return {r["step"]: {k: v for k, v in r["metrics"].items() if k not in TIMINGS} for r in journal["rows"]}


def test_mean_windows_keep_diagnostics_and_log_now_rows(tmp_path: Path) -> None:
    _train(tmp_path / "run", log_reduce="mean")
    assert _rows(tmp_path / "run") == {
        3: {"loss": 1.0, "diagnostic": 102.0, "rare": 1.0, "trainer/step": 3.0},  # mean of 0, 1, 2
        5: {"val": 4.0},  # log_now during step index 4: its own row at once, at 5 steps done
        6: {"loss": 4.0, "diagnostic": 105.0, "trainer/step": 6.0},
        7: {"loss": 6.0, "diagnostic": 106.0, "trainer/step": 7.0},  # the last step ends a window too
    }


def test_last_value_windows_and_the_zero_based_step_convention(tmp_path: Path) -> None:
    _train(tmp_path / "run", wandb_step="index")
    assert _rows(tmp_path / "run") == {
        2: {"loss": 2.0, "diagnostic": 102.0, "rare": 1.0, "trainer/step": 3.0},
        4: {"val": 4.0},
        5: {"loss": 5.0, "diagnostic": 105.0, "trainer/step": 6.0},
        6: {"loss": 6.0, "diagnostic": 106.0, "trainer/step": 7.0},
    }


def test_a_stop_mid_window_resumes_into_the_same_row(tmp_path: Path) -> None:
    _train(tmp_path / "straight", log_reduce="mean")
    with pytest.raises(SegmentEnded) as stopped:
        _train(tmp_path / "stopped", stop_after=4, log_reduce="mean")  # saved with one step of window two
    stopped.value.signals.restore()  # what the process owner does once it has requeued
    _train(tmp_path / "stopped", log_reduce="mean")
    assert _rows(tmp_path / "stopped") == _rows(tmp_path / "straight")


def test_the_journal_says_a_gap_only_where_rows_were_logged(caplog: pytest.LogCaptureFixture) -> None:
    """log_every 5: steps 146..149 were never logged, so a journal starting at 150 loses nothing."""
    tracker = WandbTracker(None, watermark=145, run_dir=Path("."))
    tracker._replay({"rows": [{"step": 150, "metrics": {"loss": 1.0}}], "complete_above": 145}, 150)
    assert "lost" not in caplog.text
    tracker = WandbTracker(None, watermark=145, run_dir=Path("."))
    tracker._replay({"rows": [{"step": 1150, "metrics": {"loss": 1.0}}], "complete_above": 1149}, 1150)
    assert "W&B steps 146..1149 may be lost" in caplog.text  # the journal was trimmed above the watermark


def test_a_trainer_knows_which_steps_reach_wandb() -> None:
    from trm_cluster.core.workload import TrainContext

    context = TrainContext(seed=0, total_steps=7, run_dir=Path("."), log_every=3)
    assert [s for s in range(7) if context.will_log(s)] == [2, 5, 6]  # steps done 3, 6 and the last
