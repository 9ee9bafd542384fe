"""The loop-side API, and the one path of a requeue that both doorways share.

Your own loop, made preemptible and exactly resumable::

    import trm_cluster

    with trm_cluster.session() as run:
        step = run.restore(model=model, optimizer=optimizer, scheduler=scheduler, data=loader)
        for step in run.steps():            # from the resume point; stops only at a step boundary
            ...                             # your step
            run.log({"loss": loss.item()})
        ...                                 # runs once the run is complete, never on a preemption

The Trainer protocol's job (scheduler/job.py) drives its trainer through this same :class:`Session`. The
requeue path reads top to bottom here: ``__enter__`` -> ``restore`` -> ``steps`` -> ``_stop`` (each hop, file
by file, in docs/architecture.md). The code after the loop never runs on a stop.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, NoReturn

from trm_cluster.core.errors import UsageError
from trm_cluster.core.signals import StopRequest, StopSignals
from trm_cluster.rundir import segments
from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.rundir.script_config import ScriptRecord, script_record
from trm_cluster.rundir.segment_timings import SegmentTimings
from trm_cluster.runtime.data_trace import trace_from_env
from trm_cluster.runtime.opening import join_run, segment_parts
from trm_cluster.runtime.plan import (
    EXIT_STOPPED,
    SegmentEnded,
    SegmentOutcome,
    SessionPlan,
    Stage,
    active_plan,
    standalone_plan,
    standalone_stop_line,
)
from trm_cluster.runtime.rehearsal import PreemptionInjector
from trm_cluster.runtime.resume import resume_segment, warn_at_loop_start
from trm_cluster.runtime.retries import record_failure
from trm_cluster.runtime.watchdog import HungSegment, Watchdog, segment_watchdog
from trm_cluster.state.background_save import BackgroundSaver
from trm_cluster.state.registered import RegisteredState, StateError, StateSource
from trm_cluster.state.saves import SavePath, may_save_in_background
from trm_cluster.wandb.guard import foreign_run_message, release_script_calls, take_over_script_calls
from trm_cluster.wandb.tracker import NullTracker, Tracker

log = logging.getLogger(__name__)


def session(config: Any = None, tags: Sequence[str] = (), **run_defaults: Any) -> Session:
    """The run of this process: the one ``submit --script`` started, or (plain ``python train.py``)
    a run of its own in ``$TRM_CLUSTER_RUN_DIR`` or ``runs/<script>-<time>``.

    ``config`` (a dataclass, mapping or namespace) and ``tags``: the script's own, for the one W&B run's
    config and tags and the manifest (a resume that changes a value records it). ``run_defaults`` are
    RunConfig fields (steps, checkpoint_every, log_every, ...): the script's own defaults, which flags
    given to ``submit`` override.
    """
    plan = active_plan()
    try:
        script = script_record(config, tags)
    except UsageError as error:
        if plan is None:  # our own process: one line, no traceback (a submitted script's job records it)
            print(f"trm_cluster: error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        raise
    if plan is None:
        plan = standalone_plan()
    elif plan.used:
        raise UsageError("trm_cluster.session() was opened twice in one run; open it once around the loop")
    plan.used = True
    return Session(plan, run_defaults, script)


class Session:
    """One process's segment of a run: open it, restore the state, run the steps, close it."""

    def __init__(
        self,
        plan: SessionPlan,
        run_defaults: Mapping[str, Any] | None = None,
        script: ScriptRecord | None = None,
    ) -> None:
        self.plan = plan
        self.run_dir = plan.run_dir
        self.manifest = RunManifest(plan.run_dir)
        self._defaults = dict(run_defaults or {})
        self._script = script or ScriptRecord({}, ())
        self._data_trace = trace_from_env()  # the doctor's runs: what each step consumed
        self._signals = StopSignals()
        self.watchdog = Watchdog(self._signals, lambda hang: None, None, None)  # armed when entered
        self._tracker: Tracker = NullTracker()
        self._injector = PreemptionInjector((), start_step=0)
        self._stage = Stage.NOT_ENTERED
        self._misuse_error: UsageError | None = None
        self._in_step = False
        self.timings = SegmentTimings()
        """What this process measured of its segment (rundir/segment_timings.py): its manifest record."""
        self._saves: SavePath | None = None
        self._restored_rng: str | None = None
        self._stopping = False
        self.step = 0
        """Steps done so far (inside the loop: the 0-based index of the step being run)."""
        self.total_steps = 0
        self.total_steps_changed: tuple[int, int] | None = None
        """(saved total, new total) when this segment's total differs from the checkpoint's
        (``--resume --steps``): rebuild or stretch a schedule that depends on it."""
        self.outcome: SegmentOutcome | None = None
        self.summary: dict[str, Any] = {}

    # -- opening ------------------------------------------------------------------------------------

    def __enter__(self) -> Session:
        if self._stage is not Stage.NOT_ENTERED:
            raise UsageError("a session is entered once: use one `with trm_cluster.session() as run:`")
        self._signals.install()  # from here on USR2/TERM are only recorded; we act at step boundaries
        entered = time.time()
        try:
            joined = join_run(self.manifest, self.plan, self._defaults)  # refused: nothing recorded
        except BaseException:
            self._signals.restore()
            raise
        self._before, self.config, self.ranks = joined.before, joined.config, joined.ranks
        try:
            parts = segment_parts(self.manifest, self.plan, joined, entered, self._script)
        except BaseException as error:
            with contextlib.suppress(Exception):  # for the failure's record, if the manifest reads
                self.segment = self.manifest.read().segments[-1]
            self._fail(error)
            self._signals.restore()
            raise
        self.data, self.segment, self.timings = parts.data, parts.segment, parts.timings
        self.store, self._goodput, self._saves = parts.store, parts.clock, parts.saves
        self._grace, self._log = parts.grace, parts.log
        hung = HungSegment(
            self.manifest,
            self.segment.index,
            self.ranks,
            lambda: self._tracker,
            self._signals,
            self.plan.leave_hung,
        )
        self.watchdog = segment_watchdog(self.config, self.plan, self.data.launch, self._signals, hung)
        take_over_script_calls(self.log)  # its wandb.init refused (a stray run), its wandb.log routed
        self.total_steps = self.data.total_steps
        self._stage = Stage.OPEN
        return self

    # -- restoring ----------------------------------------------------------------------------------

    def restore(self, **objects: Any) -> int:
        """Register the loop's state and load it from the newest valid checkpoint; return the step.

        Objects with ``state_dict``/``load_state_dict`` (model, optimizer, scheduler, scaler, EMA,
        torchdata's StatefulDataLoader), dicts (restored in place), tensors and torch Generators. The
        RNG streams (python, numpy, torch, CUDA) are restored last: call this after building
        everything, right before the loop. With several ranks, wrap the objects whose state differs
        between ranks in :func:`per_rank` (each rank saves its own); the rest is saved once, by rank 0.
        """
        return self._restore(RegisteredState(objects), require_model=False)

    def restore_trainer(self, trainer: StateSource) -> int:
        """The Trainer protocol's doorway: one object whose state holds the weights under "model"."""
        return self._restore(trainer, require_model=True)

    def _restore(self, source: StateSource, require_model: bool) -> int:
        self._expect("restore", Stage.OPEN, "run.restore(...) is called once, after entering the session")
        if (foreign := foreign_run_message()) is not None:  # a W&B run the script started before the session
            raise self._misuse(foreign)
        with self.watchdog.phase("restore", self.step):
            resumed = resume_segment(
                self.manifest, self.plan, self.segment, self.data, self._before.open_segment, self.ranks,
                self.store, source,
            )  # fmt: skip
        self.data, self.step, self._tracker = resumed.data, resumed.step, resumed.tracker
        self._restored_rng = resumed.restored_rng
        self._log.window.load_state_dict(resumed.window)
        if resumed.saved_total_steps is not None and resumed.saved_total_steps != self.total_steps:
            self.total_steps_changed = (resumed.saved_total_steps, self.total_steps)
        self.timings.load_s, self.timings.wandb_init_s = resumed.load_s, resumed.wandb_init_s
        self._say(f"[trm_cluster] segment {self.segment.index}: step {self.step}/{self.total_steps} "
                  f"on {self.plan.context.host}")  # fmt: skip
        self._log.tracker = self._tracker
        tracking = self._log.tracking_state
        if self._data_trace is not None:
            tracking = self._data_trace.around(tracking)
        self.saves.attach(source, require_model, tracking, self.data, self.total_steps, self.step)
        self._stage = Stage.RESTORED
        return self.step

    # -- the loop -----------------------------------------------------------------------------------

    def steps(self) -> Iterator[int]:
        """Step indices from the resume point to the end; a stop request ends the loop at a boundary.

        After a stop the state is saved, W&B finished and the segment closed before the loop is left
        (by :class:`SegmentEnded`), so the code after the loop runs only when the run is complete.
        """
        if self._stage is Stage.OPEN:
            raise self._misuse("call run.restore(model=..., optimizer=..., ...) before run.steps()")
        self._expect("steps", Stage.RESTORED, "run.steps() is called once per session: one loop")
        self._stage = Stage.LOOPING
        return self._loop()

    def _loop(self) -> Iterator[int]:
        warn_at_loop_start(self._restored_rng, self.saves.source, self.step)
        rehearsed = self.plan.preempt_at if self.ranks.is_main else ()  # rank 0 signals itself; all agree
        self._injector = PreemptionInjector(rehearsed, start_step=self.step)
        self._injector.start()
        self._log.loop_started(self.step)
        self._grace.loop_started(self.step)
        try:
            while self.step < self.total_steps and not self._stop_requested():
                if self.timings.first_step_s is None:  # process start to the first step
                    self.timings.first_step_s = time.time() - self.plan.context.started_at
                self._in_step = True
                self.watchdog.step_started(self.step)  # watched until the next step begins
                yield self.step
                self.watchdog.step_returned()
                self._in_step = False
                self.step += 1
                self._injector.reached(self.step)
                self._end_of_step()
        finally:
            self._injector.stop()
            self.watchdog.idle()
        if self._stopping:
            self._stop()
        self._grace.before_save(self.step)
        self.saves.save_if_unsaved(self.step)  # durable before the code after the loop runs
        self._stage = Stage.STEPS_DONE

    def _stop_requested(self) -> bool:
        """Whether any rank was asked to stop: every rank gets the same answer at the same boundary."""
        stop_after = self.plan.stop_after
        if stop_after is not None and self.step >= stop_after and self._signals.request is None:
            self._signals.request = StopRequest(int(signal.SIGUSR2), time.time())
        stop, request = self.ranks.agreed_request(self._signals.request)
        if stop:  # never written back otherwise: a signal recorded during the collective would be lost
            self._signals.request, self._stopping = request, True
        return stop

    def _end_of_step(self) -> None:
        done = self.step
        self._log.step_done(done)
        if self.config.checkpoint_every and done % self.config.checkpoint_every == 0:
            self._grace.before_save(done)
            with self.watchdog.phase("save", done):
                background = may_save_in_background(done, self.total_steps, self.config.sync_checkpoints)
                self.saves.save_or_report(done, background=background)
        self._goodput.step_done(done)
        if not self._grace.done:  # a background save's write stands in for the final, synchronous one
            self._grace.report(self.saves.write_s, self.manifest, self.segment.index, self.data.wandb.mode)

    # -- logging ------------------------------------------------------------------------------------

    def log(self, metrics: Mapping[str, Any]) -> None:
        """Log scalars. Inside the loop they join the step's ``log_every`` window (one row per window,
        reduced by ``log_reduce``); outside it (an eval before or after the loop) a row is written now."""
        self._expect_restored("log")
        if self._in_step:
            self._log.window.add(metrics)
        else:
            self.log_now(metrics)

    def log_now(self, metrics: Mapping[str, Any]) -> None:
        """Write a row at the current step now, outside the window (e.g. an eval every N steps)."""
        self._expect_restored("log_now")
        self._log.row_now(self.step + (1 if self._in_step else 0), metrics)

    @property
    def will_log(self) -> bool:
        """Whether values logged now reach W&B at this step: compute expensive diagnostics only then."""
        if not self._in_step:
            return True
        return self._log.will_log(self.step + 1)

    @property
    def wandb(self) -> Any:
        """This process's wandb Run (None when W&B is disabled), for media, define_metric, watch."""
        return self._tracker.run

    # -- saving and stopping: the requeue path --------------------------------------------------------

    @property
    def saves(self) -> SavePath:
        """This segment's save path (saves.py): how a save is staged, written, joined, reported."""
        assert self._saves is not None, "the session is entered first"
        return self._saves

    @property
    def saver(self) -> BackgroundSaver:
        """The periodic saves written in the background, and their counts (``saver.stats``)."""
        return self.saves.saver

    def _stop(self) -> NoReturn:
        """A stop was requested and the loop is at a step boundary: the requeue path, top to bottom."""
        saved_before = self._goodput.save_s
        # 1. the full state, every rank's part durable, at this boundary
        self._grace.before_save(self.step)
        with self.watchdog.phase("save", self.step):  # a save in flight joined, then this step's, if unsaved
            saved = self.saves.save_or_report(self.step)
        self.timings.stop_save_s = self._goodput.save_s - saved_before
        if not saved:  # the write failed: the next process resumes from the last good checkpoint
            self.step = self.manifest.read().step
        request = self._signals.request  # 2. read once: a signal during the save still means "stop"
        reason, requeue = "preempted", False
        if self.ranks.is_main:  # rank 0 alone talks to W&B and writes the manifest
            reason = self.plan.classify(request, self.data.launch)  # 3. timeout, preempted or cancelled
            requeue = self._close(reason, request)  # 4. W&B finished, the segment closed, requeue counted
        self.ranks.barrier()  # the other ranks leave only once the segment is closed
        self.ranks.close()
        self.outcome = SegmentOutcome(reason, self.step, requeue, rehearsed=self._injector.fired)
        self._stage = Stage.STOPPED
        raise SegmentEnded(self.outcome, self._signals)  # 5. the process owner requeues (scheduler/job.py)

    def _close(self, reason: str, request: StopRequest | None) -> bool:
        """Rank 0: W&B finished, the segment's record completed and the segment closed with its reason;
        whether the run is to be requeued (its budget counted)."""
        finishing = time.time()
        self._tracker.finish(preempting=reason in ("timeout", "preempted"), failed=reason == "cancelled")
        self.timings.finish_s = time.time() - finishing
        self._grace.saved(self.saves.write_s)  # the record as closed holds a save's time
        self.saves.count_into(self.timings)
        requeue = segments.close_segment(
            self.manifest, self.segment.index, self.step, reason, request, self._tracker.durable_step,
            self.timings,
        )  # fmt: skip
        self._say(f"[trm_cluster] segment {self.segment.index} ended at step {self.step}: {reason}")
        return requeue

    # -- closing ------------------------------------------------------------------------------------

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._leave(exc)
        finally:
            self._stage = Stage.CLOSED
            release_script_calls()

    def _leave(self, exc: BaseException | None) -> None:
        self._injector.stop()
        self.watchdog.stop()
        if isinstance(exc, SegmentEnded):
            if self.plan.standalone:  # no scheduler to requeue us: say how to continue, and exit
                self._signals.restore()
                print(standalone_stop_line(exc.outcome, self.run_dir), flush=True)
                raise SystemExit(EXIT_STOPPED) from None
            return  # the owner requeues; the stop signals stay deferred until it has
        # a misuse the script caught and went on from: recorded as the segment's failure when raised,
        # so the run must not complete now
        swallowed = self._misuse_error if exc is None and self._stage is Stage.MISUSED else None
        misuse = swallowed or (exc if isinstance(exc, UsageError | StateError) else None)
        clean_exit = isinstance(exc, SystemExit) and exc.code in (0, None) and self._stage is Stage.STEPS_DONE
        try:
            if swallowed is None and (exc is None or clean_exit):
                self._complete()
            elif swallowed is None and exc is not None:
                self._fail(exc)
        except (UsageError, StateError) as error:
            misuse = error
            if not self.plan.standalone:
                raise
        finally:
            self._signals.restore()
        if misuse is not None and self.plan.standalone:  # our own process: one line, no traceback
            print(f"trm_cluster: error: {misuse}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        if swallowed is not None:
            raise swallowed

    def _complete(self) -> None:
        if self._stage in (Stage.OPEN, Stage.RESTORED):
            raise self._misuse(
                "the session ended without run.steps(): write the loop as `for step in run.steps():`"
            )
        if self._stage is Stage.LOOPING:  # the loop was left with `break`: the run ends here
            self.step += 1 if self._in_step else 0
            self._in_step = False
            self._say(f"[trm_cluster] the loop ended early (break) at step {self.step}; the run ends here")
            self._grace.before_save(self.step)
            self.saves.save_if_unsaved(self.step)
        if self.ranks.is_main:
            self.timings.stop_save_s = self._goodput.last_save_s
            self._close("completed", None)
        self.ranks.barrier()
        self.ranks.close()
        self.summary = segments.completion_summary(self.manifest.read(), self.step, self.saves.final_digest)
        self.outcome = SegmentOutcome("completed", self.step, False, self.summary)
        self.plan.summary = self.summary

    def _fail(self, error: BaseException) -> None:
        if self.watchdog.fired is not None:
            threading.Event().wait()  # a peer left a hung step: the watchdog's thread ends this process
        if self._saves is not None:
            self._saves.join_quietly()  # a save in flight is a valid checkpoint: let it become durable
        self._tracker.finish(preempting=False, failed=True)
        if hasattr(self, "ranks"):
            self.ranks.close()  # a collective that failed (a dead rank) leaves the group unusable
            if not self.ranks.is_main:
                return  # rank 0 records the failure (it sees the dead or failing rank in its next collective)
        in_loop = self._stage in (Stage.LOOPING, Stage.STEPS_DONE)
        retryable = in_loop and not isinstance(error, UsageError | StateError)  # retries.py
        world_size = self.ranks.world_size if hasattr(self, "ranks") else 1
        record_failure(self.manifest, self.segment.index, error, world_size, self.step if retryable else None)

    # -- misuse ---------------------------------------------------------------------------------------

    def _expect(self, call: str, stage: Stage, rule: str) -> None:
        if self._stage is Stage.NOT_ENTERED:
            raise UsageError(f"run.{call}() outside `with trm_cluster.session() as run:`")
        if self._stage is not stage:
            raise self._misuse(rule)

    def _expect_restored(self, call: str) -> None:
        if self._stage is Stage.CLOSED:  # a row now would be dropped: the run's W&B run is finished
            raise UsageError(f"run.{call}() after the session closed: log inside the `with` block (its code "
                             "after the loop runs once, when the run is complete)")  # fmt: skip
        if self._stage in (Stage.NOT_ENTERED, Stage.OPEN):
            raise self._misuse(f"run.{call}() before run.restore(...): register the state first")

    def _misuse(self, rule: str) -> UsageError:
        error = UsageError(rule)
        if self._stage not in (Stage.NOT_ENTERED, Stage.STOPPED, Stage.CLOSED):
            self._fail(error)
            self._stage, self._misuse_error = Stage.MISUSED, error
        return error

    def _say(self, line: str) -> None:
        if not self.plan.quiet:
            print(line, flush=True)
