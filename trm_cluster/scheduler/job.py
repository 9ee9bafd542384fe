"""What submitit runs, and reruns after every requeue: the process owner of a run's segments.

Each process runs one segment through a :class:`~trm_cluster.runtime.session.Session` (the requeue path
lives there, once). When a segment stops, the session raises :class:`SegmentEnded` out of the loop
and the owner here decides: the run completed, was cancelled, spent its timeout budget, or is handed
over to submitit's requeue (``scontrol requeue`` on Slurm, exit code 144 on the local executor). The
debug executor has no scheduler: the next segment runs in-process, from disk, as a new process would.

The objects submitit pickles carry only the run directory and a few flags: everything else comes
back from the manifest and the checkpoint files, so a Slurm-initiated requeue that reruns an old
pickle still resumes from the newest state on disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import submitit

from trm_cluster.core.job_context import JobContext
from trm_cluster.core.process_exit import skip_final_collections
from trm_cluster.core.signals import StopSignals, preempt_signal
from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.runtime.plan import (
    EXIT_STOPPED,
    SegmentEnded,
    SegmentOutcome,
    SessionPlan,
    exit_hung,
    stop_after_from_env,
)
from trm_cluster.runtime.retries import after_failure

log = logging.getLogger(__name__)


class RequeueRefused(RuntimeError):
    """The run stopped at a time limit with its timeout requeue budget spent."""


class JobCancelled(RuntimeError):
    """The scheduler cancelled the job (scancel): saved, not requeued."""


class SegmentedJob(submitit.helpers.Checkpointable):
    """A run's process owner: run segments until the run completes or the scheduler takes over."""

    def __init__(
        self, run_dir: Path, wandb_resume: str = "allow", preempt_at: Sequence[int] = (), quiet: bool = False
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.wandb_resume = wandb_resume
        self.preempt_at = tuple(preempt_at)
        self.quiet = quiet

    def __call__(self) -> dict[str, Any]:
        skip_final_collections()  # the job's process exits faster (core/process_exit.py)
        _configure_logging()
        while True:
            context = JobContext.detect()
            plan = SessionPlan(self.run_dir, context, self.wandb_resume, self.preempt_at, self.quiet)
            if context.executor == "process":  # run directly (the doctor): it may ask for a stop
                plan.stop_after = stop_after_from_env()
            owner_leaves = {"slurm": leave_hung, "local": leave_hung, "process": exit_hung}
            plan.leave_hung = owner_leaves.get(context.executor)  # debug: the caller's process, not ours
            try:
                return self.run_segment(plan)
            except SegmentEnded as ended:
                outcome, signals = ended.outcome, ended.signals
            except Exception:
                if not self._retry_after_failure(context):
                    raise
                continue  # the next segment, in this process, from the newest checkpoint
            if outcome.rehearsed:  # the requeued process (this object, pickled again) rehearses the rest
                self.preempt_at = self.preempt_at[1:]
            self._after_stop(outcome, context, signals)

    def run_segment(self, plan: SessionPlan) -> dict[str, Any]:
        """Run one segment; return the run's summary when it completes (a stop raises SegmentEnded)."""
        raise NotImplementedError

    def _retry_after_failure(self, context: JobContext) -> bool:
        """Whether a step that raised is tried again (runtime/retries.py); rank 0 of a one-rank run decides.

        With several ranks the failure ends the job (their process group cannot be rebuilt in place)."""
        if context.world_size > 1 or not RunManifest(self.run_dir).exists():
            return False
        data = RunManifest(self.run_dir).read()
        if (
            not data.segments
            or data.segments[-1].end_reason != "failed"
            or data.segments[-1].pid != context.pid
        ):
            return False  # this process never opened a segment (refused start): nothing to retry
        decision = after_failure(self.run_dir)
        _say(False, decision.console_line(self.run_dir))
        return decision.retry

    def _after_stop(self, outcome: SegmentOutcome, context: JobContext, signals: StopSignals) -> None:
        if not context.is_rank_zero:  # rank 0 requeues the job (every task of it); the others just leave
            signals.restore()
            if context.executor in ("local", "slurm"):
                exit_at_once(0)  # the local controller requeues once every task is gone
            sys.exit(0)
        if outcome.reason == "cancelled":
            signals.restore()
            raise JobCancelled(f"cancelled at step {outcome.step}; the state is saved, resume with --resume")
        if not outcome.requeue:
            signals.restore()
            raise RequeueRefused(
                f"stopped at step {outcome.step} ({outcome.reason}); the timeout requeue budget is spent. "
                f"Continue with: python -m trm_cluster.submit --resume {self.run_dir}"
            )
        if context.executor == "process" and outcome.step == stop_after_from_env():
            signals.restore()
            raise SystemExit(EXIT_STOPPED)  # asked to stop here (the doctor): the next process resumes
        if context.executor in ("debug", "process"):
            signals.restore()  # no scheduler to requeue us: the next segment runs here, from disk
            return
        _say(
            self.quiet,
            "[trm_cluster] state saved; handing over to submitit's requeue "
            "(its own 'timed-out'/'preempted' log line is a wall-time guess, the manifest has the reason)",
        )
        hand_over_to_submitit(signals)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Cheap by design: the state is already on disk when submitit calls this."""
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def hand_over_to_submitit(signals: StopSignals) -> None:
    """Call submitit's own handler now that the state is durable: it calls our cheap ``checkpoint()``,
    dumps the pickle, runs ``scontrol requeue`` (local: exit code 144) and exits.

    From here until the process is gone, stop signals are ignored: a second USR2 during the hand-over
    or the interpreter's exit (which resets Python-level handlers to the default action, "terminate")
    would kill the exiting task and leave the run requeued with no process to run it.
    """
    handler = signals.previous_handler(preempt_signal())
    for signum in signals.signals:
        signal.signal(signum, signal.SIG_IGN)
    if not callable(handler):
        raise RuntimeError("no submitit signal handler installed; is this running under submitit?")
    try:
        handler(preempt_signal(), None)
    except SystemExit as handed_over:  # the requeue is issued
        exit_at_once(handed_over.code)
    sys.exit(-1)  # submitit's handler exits itself; this only guards against one that returns


def leave_hung(retry: bool | None, signals: StopSignals) -> None:
    """A hung process, on its watchdog's thread (runtime/watchdog.py), the segment recorded: rank 0
    requeues through submitit's own handler (Slurm: ``scontrol requeue``; local: exit 144), or exits as
    failed once the step has hung ``--max-failures`` times; other ranks just leave (the requeue, or the
    local controller once every task is gone, takes the job on). No signal disposition is changed here
    (only the main thread may): the recording handler stays, and the exit skips the interpreter's teardown."""
    if retry is None or retry is False:
        exit_at_once(0 if retry is None else 1)
    handler = signals.previous_handler(preempt_signal())
    try:
        if callable(handler):
            handler(preempt_signal(), None)
    except SystemExit as handed_over:
        exit_at_once(handed_over.code)
    except BaseException as error:  # submitit refused (timed out too often): the run stays as recorded
        log.error("the requeue of a hung process failed: %s", error)
    exit_at_once(1)


def exit_at_once(code: object) -> NoReturn:
    """Leave without the interpreter's teardown, once everything that must outlive us is durable.

    Why: unwinding the interpreter (atexit, then unloading torch and the rest) took seconds of the
    time from a signal to the requeue, and the local executor starts the next process only when every
    task is gone. What must survive is on disk by now (the state, the manifest, submitit's pickle and
    its requeue); W&B's service is shut down here as its atexit hook would, then the logs flushed.
    DataLoader workers are not joined: they notice their parent is gone and exit on their own.
    """
    if "wandb" in sys.modules:
        try:
            sys.modules["wandb"].teardown()
        except Exception as error:  # a dead service: nothing left to flush
            log.debug("W&B teardown before exit: %s", error)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed stream: nothing to flush
            stream.flush()
    os._exit(code & 0xFF if isinstance(code, int) else 1)


class TrainingJob(SegmentedJob):
    """The Trainer-protocol doorway: a workload's trainer, driven step by step through the session."""

    def run_segment(self, plan: SessionPlan) -> dict[str, Any]:
        # imported here, in the job's process: `submit` pickles this class without loading torch
        from trm_cluster.scheduler.trainer_segment import run_trainer_segment

        return run_trainer_segment(plan)


def _say(quiet: bool, line: str) -> None:
    if not quiet:
        print(line, flush=True)


def _configure_logging() -> None:
    """Our warnings (checkpoint fallbacks, W&B trouble) go to the job's stderr log, once."""
    package = logging.getLogger("trm_cluster")
    if not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
        package.propagate = False
