"""What a process's owner tells its session, and what a session tells its owner back.

A :class:`SessionPlan` says which run this process trains, where it runs and what to rehearse; the
script job serves one to the ``trm_cluster.session()`` call inside the user's script, and a plain
``python train.py`` makes its own (:func:`standalone_plan`). A stopped segment comes back to the owner
as :class:`SegmentEnded`, carrying the :class:`SegmentOutcome`.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from trm_cluster.core.errors import UsageError
from trm_cluster.core.job_context import JobContext
from trm_cluster.core.signals import StopRequest, StopSignals
from trm_cluster.rundir.creation import create_script_run

RUN_DIR_ENV = "TRM_CLUSTER_RUN_DIR"
"""Outside ``submit``: the run directory of ``session()`` (resumed when it holds a run)."""
STOP_AFTER_ENV = "TRM_CLUSTER_STOP_AFTER"
"""Outside ``submit``: stop (save, exit) after this many steps, as a preemption would (the doctor)."""
TRACE_DATA_ENV = "TRM_CLUSTER_TRACE_DATA"
"""Set to "1" by the doctor for its runs: each checkpoint records what its step consumed (data_trace.py)."""
SKIP_RNG_RESTORE_ENV = "TRM_CLUSTER_SKIP_RNG_RESTORE"
"""Set to "1" by the doctor's control run only: a resume that leaves the RNG streams as the process
made them, the bug the control plants to show that the comparison catches it."""
EXIT_STOPPED = 75
"""Exit status of a process outside ``submit`` that stopped before the end: run it again to resume."""


class Stage(enum.Enum):
    """Where a session is; the calls check it (one out of order is a :class:`UsageError`). In order:
    NOT_ENTERED -> OPEN -> RESTORED -> LOOPING -> STEPS_DONE; a stop ends it STOPPED, a misuse MISUSED;
    leaving the block CLOSED."""

    NOT_ENTERED = "built; its `with` not entered yet"
    OPEN = "entered: the segment is open; run.restore() comes next"
    RESTORED = "the state is registered and loaded; run.steps() comes next"
    LOOPING = "the loop has begun (a `break` leaves it here)"
    STEPS_DONE = "the loop ran out of steps and the last state is saved"
    STOPPED = "a stop request ended the segment at a step boundary: saved, closed, SegmentEnded raised"
    MISUSED = "a call out of order ended the segment, recorded as its failure"
    CLOSED = "the `with` block is left: the segment is closed, nothing more reaches the run"


@dataclass(frozen=True)
class SegmentOutcome:
    reason: str
    """completed, timeout, preempted or cancelled."""
    step: int
    requeue: bool
    summary: dict[str, Any] = field(default_factory=dict)
    rehearsed: bool = False
    """The stop came from the preemption rehearsal's own signal."""


class SegmentEnded(BaseException):
    """Raised out of ``run.steps()`` once a stopped segment is saved and closed.

    A BaseException, so a loop's ``except Exception`` cannot swallow it. The process owner (scheduler/job.py)
    catches it and requeues; the stop signals stay deferred (``signals``) until it has.
    """

    def __init__(self, outcome: SegmentOutcome, signals: StopSignals) -> None:
        super().__init__(f"segment stopped at step {outcome.step}: {outcome.reason}")
        self.outcome = outcome
        self.signals = signals


@dataclass
class SessionPlan:
    """What the process owner tells the session: the run, where it runs, and its rehearsal."""

    run_dir: Path
    context: JobContext
    wandb_resume: str = "allow"
    preempt_at: tuple[int, ...] = ()
    quiet: bool = False
    standalone: bool = False
    """No submitit owner (``python train.py``): a stop saves and exits with :data:`EXIT_STOPPED`."""
    stop_after: int | None = None
    used: bool = False
    """Whether a session was opened for this plan (a script that never opens one is an error)."""
    summary: dict[str, Any] = field(default_factory=dict)
    """The run's summary, once a session completed it."""
    leave_hung: Callable[[bool | None, StopSignals], None] | None = None
    """How a hung process leaves (watchdog.py), called on the watchdog's thread once the segment is
    recorded: requeued to retry (True), failed (False), or a rank other than 0 (None). None here: no
    watchdog (the debug executor runs the job in its caller's process, which must not be ended)."""

    def classify(self, request: StopRequest | None, launch: Mapping[str, Any]) -> str:
        """'timeout', 'preempted' or 'cancelled' for this process's stop (JobContext.classify), from the
        limits of its submission (``launch``: the manifest's executor options)."""
        if request is None:
            return "preempted"
        time_min = launch.get("time_min")
        time_limit_s = float(time_min) * 60 if time_min else None
        return self.context.classify(request, float(launch.get("signal_delay_s", 120)), time_limit_s)


_active_plan: SessionPlan | None = None


@contextlib.contextmanager
def serving(plan: SessionPlan) -> Iterator[SessionPlan]:
    """Make ``plan`` the one that ``session()`` calls in this process pick up (the script job)."""
    global _active_plan
    previous, _active_plan = _active_plan, plan
    try:
        yield plan
    finally:
        _active_plan = previous


def active_plan() -> SessionPlan | None:
    """The plan a process owner (the script job) serves, or None outside one."""
    return _active_plan


def standalone_plan() -> SessionPlan:
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("session")
    run_dir = Path(os.environ.get(RUN_DIR_ENV) or f"runs/{script.stem}-{datetime.now():%Y%m%d-%H%M%S}")
    if not (run_dir / "manifest.json").exists():
        create_script_run(run_dir.resolve(), script=script, script_args=sys.argv[1:], run_flags={})
        print(f"[trm_cluster] new run in {run_dir} (outside submit: rerun with {RUN_DIR_ENV}={run_dir} "
              "to resume it)", flush=True)  # fmt: skip
    return SessionPlan(
        run_dir=run_dir.resolve(),
        context=JobContext.detect(),
        standalone=True,
        stop_after=stop_after_from_env(),
        leave_hung=exit_hung,
    )


def exit_hung(retry: bool | None, signals: StopSignals | None = None) -> None:
    """A process with no scheduler to requeue it: exit as a stop does (run it again to resume from the
    last checkpoint), or as failed once the same step has hung too often. (``signals``, unused: the signature
    of ``scheduler.job.leave_hung``; a plain process has no handler to hand over to.)"""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(1 if retry is False else EXIT_STOPPED)


def standalone_stop_line(outcome: SegmentOutcome, run_dir: Path) -> str:
    """What a plain ``python train.py`` prints when a stop ended it: how to continue."""
    return (
        f"[trm_cluster] stopped at step {outcome.step} ({outcome.reason}); the state is saved. Continue with "
        f"{RUN_DIR_ENV}={run_dir} and the same command, or python -m trm_cluster.submit --resume {run_dir}"
    )


def stop_after_from_env() -> int | None:
    raw = os.environ.get(STOP_AFTER_ENV)
    try:
        return int(raw) if raw else None
    except ValueError:
        raise UsageError(f"{STOP_AFTER_ENV}={raw!r} is not a step number") from None
