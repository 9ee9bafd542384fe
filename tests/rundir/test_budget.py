"""The timeout requeue budget (``--max-requeues``), on a real manifest: timeouts spend it, preemptions
never do, and every submission (``--resume``) starts a fresh one. Bookkeeping, so driven through
segments.py and launch.py directly, as the job drives them at the end of each segment."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from support import BOOKKEEPING_CONFIG, new_run, this_process

from trm_cluster.core.signals import StopRequest
from trm_cluster.launch.runs import resume_run
from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.rundir.segments import close_segment, open_segment

SIGNAL = {"timeout": signal.SIGUSR2, "preempted": signal.SIGUSR2, "cancelled": signal.SIGTERM}


def _segments(manifest: RunManifest, reasons: list[str]) -> list[bool]:
    """One process per reason: open its segment, close it with that reason; what close_segment allowed."""
    context, allowed = this_process(), []
    for step, reason in enumerate(reasons, start=1):
        segment = open_segment(manifest, context)
        request = StopRequest(SIGNAL.get(reason, signal.SIGUSR2), time.time())
        allowed.append(close_segment(manifest, segment.index, step, reason, request, durable_step=step))
    return allowed


def test_preemptions_never_spend_the_timeout_budget(tmp_path: Path) -> None:
    manifest = new_run(tmp_path, max_requeues=1)
    reasons = ["preempted", "timeout", "preempted", "preempted", "timeout"]
    assert _segments(manifest, reasons) == [True, True, True, True, False]
    data = manifest.read()
    assert data.requeues == {"preempted": 3, "timeout": 2} and data.status == "failed"
    assert [s.end_reason for s in data.segments] == reasons
    assert [s.message for s in data.segments] == [None] * 4 + [
        "timeout requeue budget spent (1 requeues since the last submit)"
    ]
    assert data.segments[-1].signal == "SIGUSR2" and data.wandb.last_step == 5


def test_a_preemption_is_requeued_even_with_the_budget_spent(tmp_path: Path) -> None:
    """Budget 0: the first timeout fails the run; a preemption is never refused, not even in a process
    the scheduler reran after that (Slurm requeues a job by itself on a node failure)."""
    manifest = new_run(tmp_path, max_requeues=0)
    assert _segments(manifest, ["preempted", "timeout", "preempted"]) == [True, False, True]
    assert manifest.read().status == "requeued"


def test_each_submission_gets_a_fresh_budget(tmp_path: Path) -> None:
    manifest = new_run(tmp_path, max_requeues=1)
    assert _segments(manifest, ["timeout", "timeout"]) == [True, False]
    resume_run(tmp_path, BOOKKEEPING_CONFIG, {"max_requeues": 2})
    data = manifest.read()
    assert (data.timeouts_at_submit, data.max_requeues, data.status) == (2, 2, "requeued")
    assert _segments(manifest, ["timeout", "preempted", "timeout", "timeout"]) == [True, True, True, False]
    data = manifest.read()
    assert data.requeues == {"timeout": 5, "preempted": 1} and data.timeouts_at_submit == 2
    assert data.segments[-1].message == "timeout requeue budget spent (2 requeues since the last submit)"


def test_completed_and_cancelled_segments_are_never_requeued_nor_counted(tmp_path: Path) -> None:
    cancelled = new_run(tmp_path / "cancelled", max_requeues=5)
    assert _segments(cancelled, ["cancelled"]) == [False]
    data = cancelled.read()
    assert data.status == "failed" and data.requeues == {"timeout": 0, "preempted": 0}
    assert data.segments[0].end_reason == "killed" and data.segments[0].signal == "SIGTERM"
    assert data.segments[0].message == (
        "cancelled (SIGTERM that was neither a time limit nor a preemption); not requeued"
    )
    completed = new_run(tmp_path / "completed", max_requeues=5)
    assert _segments(completed, ["preempted", "completed"]) == [True, False]
    data = completed.read()
    assert data.status == "completed" and data.requeues == {"timeout": 0, "preempted": 1}
    assert data.segments[-1].message is None
