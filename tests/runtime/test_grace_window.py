"""The grace-window check (grace.py): the value a stop needs, and the session's warning at its first
save, in the manifest and in ``status``, only when ``--signal-delay-s`` is too short."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from support import manifest, this_process

from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.ops.report import render, run_status
from trm_cluster.rundir.creation import create_script_run
from trm_cluster.rundir.manifest import RunManifest, Segment
from trm_cluster.rundir.segment_timings import SegmentTimings
from trm_cluster.runtime.grace import (
    advice_from_history,
    finish_estimate_s,
    grace_warning,
    needed_signal_delay_s,
)
from trm_cluster.runtime.plan import SessionPlan
from trm_cluster.runtime.session import Session


def test_a_stop_needs_one_step_the_final_save_and_the_finish_twice_over() -> None:
    assert needed_signal_delay_s(step_s=10, save_s=20, finish_s=5) == 70
    assert needed_signal_delay_s(0.001, 0.002, 0.0) == 1  # never below one second
    warning = grace_warning(60, step_s=10, save_s=20, finish_s=5)
    assert warning is not None and "use --signal-delay-s 70" in warning and "--signal-delay-s 60 " in warning
    assert grace_warning(70, step_s=10, save_s=20, finish_s=5) is None
    measured = [segment(finish_s=3.0), segment(), segment(finish_s=9.0)]
    assert finish_estimate_s(measured, "offline") == 9.0  # the slowest one measured
    assert finish_estimate_s([], "offline") == 5.0 and finish_estimate_s([], "disabled") == 0.0


def test_a_resume_is_advised_from_the_slowest_step_and_save_of_the_runs_history() -> None:
    history = [
        segment(step_s=1.0, sync_save_s=4.0, finish_s=2.0),
        segment(),
        segment(step_s=3.0, sync_save_s=2.0),
    ]
    advice = advice_from_history(history, "offline", signal_delay_s=10)
    assert advice is not None and "use --signal-delay-s 18" in advice  # 2 x (3 + 4 + 2)
    assert advice_from_history(history, "offline", signal_delay_s=18) is None
    assert advice_from_history([segment()], "offline", signal_delay_s=1) is None  # nothing measured


def segment(**measured: float) -> Segment:
    return Segment(0, "1", None, 0, "host", 1, "local", "t0", 0, timings=SegmentTimings(**measured))


def _train(run_dir: Path, signal_delay_s: int, steps: int) -> None:
    with RunManifest(run_dir).update() as data:
        data.launch["signal_delay_s"] = signal_delay_s
    weight = torch.zeros(1)
    context = dataclasses.replace(this_process(), executor="local")  # a job with a signal delay
    with Session(SessionPlan(run_dir, context, quiet=True), {"steps": steps, "checkpoint_every": 2}) as run:
        run.restore(weight=weight)
        for _ in run.steps():
            weight += 1
    assert {"imports_s", "manifest_s", "load_s", "wandb_init_s", "first_step_s", "step_s", "sync_save_s",
            "finish_s", "process_start_time", "first_step_time", "save_s"} <= set(run.timings.measured())  # fmt: skip


def test_the_session_warns_at_its_first_save_when_the_signal_delay_cannot_fit_a_stop(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    create_script_run(run_dir, Path(__file__), [], {}, wandb=WandbOptions(mode="disabled"))
    _train(run_dir, signal_delay_s=0, steps=4)  # nothing fits in 0 s
    _train(run_dir, signal_delay_s=600, steps=8)  # a few milliseconds fit in 600 s
    first, second = manifest(run_dir)["segments"]
    assert first["warning"] is not None and "--signal-delay-s 0 is too short" in first["warning"]
    assert "use --signal-delay-s " in first["warning"]
    assert second["warning"] is None
    assert first["timings"]["step_s"] > 0 and first["timings"]["sync_save_s"] > 0  # recorded at the close
    assert "warning: --signal-delay-s 0 is too short" in render(run_status(run_dir))
