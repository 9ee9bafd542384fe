"""A step that never returns must not strand the run: a thread that is not the loop's watches it.

Two limits, each off when None:

- **stop grace** (``stop_grace_s``): a stop was requested (USR2, SIGTERM) and the loop has not reached a
  step boundary within this many seconds of the request, or of the step's start if that came later.
  Past it the scheduler's kill would come before any save could, so waiting longer gains nothing.
- **step timeout** (``step_timeout_s``): with no signal at all, one step (the loop body and the
  boundary's collectives), the restore or a save has taken longer than this.

When one is passed, the watchdog writes every thread's Python stack (``faulthandler``) to the log with a
line naming the step and the limit, then calls the session's ``on_hang``, which records the segment as
``hung``, finishes W&B within its bound and leaves at once: requeued (from the last durable checkpoint;
nothing is saved mid-step) or, after ``--max-failures`` hangs at the same step, failed. The phases the
loop marks are the only ones watched: code after the loop (a final evaluation) never is.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trm_cluster.core.config import RunConfig
from trm_cluster.core.distributed import Ranks
from trm_cluster.core.signals import StopSignals
from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.rundir.segments import fail_segment, record_hang_line
from trm_cluster.runtime.plan import SessionPlan
from trm_cluster.runtime.retries import after_failure
from trm_cluster.wandb.tracker import Tracker

log = logging.getLogger(__name__)

POLL_S = 0.5
"""How often the watchdog looks; the bound on top of each limit."""
AUTO_FLOOR_S = 600.0
"""``step_timeout_s="auto"``: never less than this..."""
AUTO_FACTOR = 20.0
"""...nor less than this many times the slowest step (or save) seen so far in this process."""
AUTO_WARMUP_STEPS = 3
RESTORE_FLOOR_S = 300.0
"""The restore is watched at max(this, the step timeout): it waits for ``wandb.init`` and reads the
checkpoint, seconds on a loaded machine (a 1 s step timeout once failed a healthy restore in CI)."""
"""Steps before "auto" arms: the first ones compile, warm caches and allocate."""


@dataclass(frozen=True)
class Hang:
    """What the watchdog saw: the phase stuck, its step, which limit it passed and by how long."""

    phase: str
    step: int
    limit: str
    waited_s: float
    at_boundary: bool = False
    """The loop's step had returned: this rank waited at the boundary (the stop all-reduce, a save's
    collective), that is, on a peer stuck in its step."""

    def describe(self) -> str:
        if self.at_boundary:
            return f"the boundary after step {self.step} (waiting on the other ranks) did not pass within {self.limit}"
        where = {
            "step": f"step {self.step}",
            "restore": "the restore",
            "save": f"the save of step {self.step}",
        }
        return f"{where.get(self.phase, self.phase)} did not return within {self.limit}"


class Watchdog:
    """Watches the phases the session marks (:meth:`phase`); one per process, every rank its own."""

    def __init__(
        self,
        signals: StopSignals,
        on_hang: Callable[[Hang], None],
        stop_grace_s: float | None,
        step_timeout_s: float | str | None,
    ) -> None:
        self._signals, self._on_hang = signals, on_hang
        self.stop_grace_s = stop_grace_s
        self.step_timeout_s = step_timeout_s
        self._phase: str | None = None
        self._at_boundary = False
        self._step = 0
        self._since = 0.0
        self._slowest: dict[str, float] = {}
        self._steps_seen = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.fired: Hang | None = None
        self._thread: threading.Thread | None = None

    @property
    def armed(self) -> bool:
        return self.stop_grace_s is not None or self.step_timeout_s is not None

    def start(self) -> None:
        if self.armed and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="trm-cluster-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._mark(None, self._step)

    def step_started(self, step: int) -> None:
        """The loop hands out ``step``: the previous one (and its boundary) ended now."""
        self._mark("step", step)

    def step_returned(self) -> None:
        """The loop's body returned; the boundary (its collectives) goes on in the same step's time."""
        self._at_boundary = True

    @contextlib.contextmanager
    def phase(self, name: str, step: int) -> Iterator[None]:
        """Watch ``name`` ("restore", "save") for ``step``; afterwards the previous phase goes on, its clock
        restarted (a save is progress, not part of a hung step)."""
        previous, previous_step = self._phase, self._step
        self._mark(name, step)
        try:
            yield
        finally:
            if self.fired is None:
                self._mark(previous, previous_step)

    def idle(self) -> None:
        """Nothing watched from here (the loop is left: a stop's own path, or the code after the loop)."""
        self._mark(None, self._step)

    def _mark(self, phase: str | None, step: int) -> None:
        now = time.monotonic()
        with self._lock:
            if self._phase is not None:  # the phase that ends: its length, for "auto"
                took = now - self._since
                kind = "save" if self._phase == "save" else "step"
                self._slowest[kind] = max(self._slowest.get(kind, 0.0), took)
                self._steps_seen += self._phase == "step"
            self._phase, self._step, self._since, self._at_boundary = phase, step, now, False

    def limit_s(self, phase: str) -> float | None:
        """The step timeout of ``phase`` now (None: not armed)."""
        timeout = self.step_timeout_s
        if timeout is None:
            return None
        if phase == "restore":  # W&B's start and the checkpoint's read: never a step's time
            return max(RESTORE_FLOOR_S, AUTO_FLOOR_S if timeout == "auto" else float(timeout))
        if timeout != "auto":
            return float(timeout)
        if self._steps_seen < AUTO_WARMUP_STEPS:
            return None
        kind = "save" if phase == "save" else "step"
        return max(AUTO_FLOOR_S, AUTO_FACTOR * self._slowest.get(kind, self._slowest.get("step", 0.0)))

    def check(self, now: float | None = None) -> Hang | None:
        """The hang, if the phase now watched has passed a limit."""
        now = time.monotonic() if now is None else now
        with self._lock:
            phase, step, since, boundary = self._phase, self._step, self._since, self._at_boundary
        if phase is None:
            return None
        request = self._signals.request
        if self.stop_grace_s is not None and request is not None and phase == "step":
            requested = time.monotonic() - (time.time() - request.received_at)  # on the monotonic clock
            asked = now - max(since, requested)
            if asked > self.stop_grace_s:
                return Hang(
                    phase, step, f"--stop-grace-s {self.stop_grace_s:g} of {request.name}", asked, boundary
                )
        limit = self.limit_s(phase)
        if limit is not None and now - since > limit:
            given = f"auto ({limit:g} s)" if self.step_timeout_s == "auto" else f"{limit:g}"
            return Hang(phase, step, f"--step-timeout-s {given}", now - since, boundary and phase == "step")
        return None

    def _watch(self) -> None:
        while not self._stopped.wait(POLL_S):
            hang = self.check()
            if hang is not None:
                self.fired = hang
                dump_stacks(hang)
                self._on_hang(hang)  # leaves the process (or returns when nothing is to be done)
                return


def dump_stacks(hang: Hang, stream: Any = None) -> None:
    """The line naming the hang, then every thread's Python stack, on the log (stderr)."""
    stream = stream or sys.stderr
    with contextlib.suppress(OSError, ValueError):
        stream.write(
            f"[trm_cluster] hung: {hang.describe()} ({hang.waited_s:.0f} s); every thread's stack:\n"
        )
        stream.flush()
        faulthandler.dump_traceback(file=stream, all_threads=True)
        for line in child_processes():  # DataLoader workers: alive, stopped, gone (a zombie)
            stream.write(f"[trm_cluster] child process {line}\n")
        stream.flush()


_STATES = {"R": "running", "S": "sleeping", "D": "waiting on I/O", "T": "stopped", "Z": "exited (zombie)"}


def kill_children() -> None:
    """SIGKILL this process's children (DataLoader workers) before a hung process leaves: a worker stuck
    in a read never notices its parent is gone, and would hold the job's pipes, memory and devices for as
    long as it is stuck. W&B's writer is left to W&B's teardown on the way out (killed, the teardown
    waited on it forever: seen)."""
    for line in child_processes():
        if "(wandb" in line:
            continue
        with contextlib.suppress(OSError):
            os.kill(int(line.split()[0]), signal.SIGKILL)


def child_processes(pid: int | None = None) -> list[str]:
    """This process's children (Linux ``/proc``): pid, name and state, e.g. a DataLoader worker that the
    main thread waits on, stuck (sleeping, waiting on I/O), stopped or dead."""
    parent = os.getpid() if pid is None else pid
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        name, _, rest = raw.partition(" (")[2].rpartition(") ")
        fields = rest.split()
        if len(fields) > 1 and fields[1] == str(parent):
            state = _STATES.get(fields[0], fields[0])
            found.append(f"{stat.parent.name} ({name}): {state}")
    return sorted(found, key=lambda line: int(line.split()[0]))


DEFAULT_GRACE_FLOOR_S = 10.0
HANDOVER_S = 5.0
"""A rank other than 0 that hung waits this long before it leaves, so that rank 0 (hung too, in the
collective it waits in) requeues the job before its peer's exit fails that collective."""


def default_stop_grace_s(executor: str, signal_delay_s: float | None) -> float | None:
    """Half the signal's head start on the scheduler's kill (the other half is for the stop's save and
    W&B's finish, which the grace check measures); off where no kill follows a signal."""
    if executor not in ("slurm", "local") or signal_delay_s is None:
        return None
    return max(DEFAULT_GRACE_FLOOR_S, signal_delay_s / 2)


@dataclass
class HungSegment:
    """What leaving a hung segment needs: where to record it, which rank this is, W&B's run (as it is
    when the hang comes) and how the owner leaves (``plan.leave_hung``)."""

    manifest: RunManifest
    segment: int
    ranks: Ranks
    tracker: Callable[[], Tracker]
    signals: StopSignals
    leave: Callable[[bool | None, StopSignals], None] | None

    def __call__(self, hang: Hang) -> None:
        """On the watchdog's thread, the loop's thread stuck: record, finish W&B, leave (no save: mid-step is
        not a step boundary; the next process resumes from the last durable checkpoint)."""
        retry = None
        with contextlib.suppress(Exception):  # the manifest matters, but leaving matters more
            record_hang_line(self.manifest, self.segment, f"rank {self.ranks.rank}: {hang.describe()}")
        if self.ranks.is_main:
            try:
                retry = record_hang(self.manifest, self.segment, hang, self.ranks.rank, self.tracker())
            except Exception as error:  # never stay stuck for want of a record: leave, to be retried
                log.error("could not record the hang (%s); leaving to be requeued all the same", error)
                retry = True
        else:
            time.sleep(HANDOVER_S)  # rank 0 requeues the job first: its collective must not fail before
        if self.leave is not None:
            kill_children()  # a stuck loader worker would outlive us (it never sees its parent go)
            self.leave(retry, self.signals)


def segment_watchdog(
    config: RunConfig, plan: SessionPlan, launch: Mapping[str, Any], signals: StopSignals, hung: HungSegment
) -> Watchdog:
    """This segment's watchdog, started: the run's limits, the stop grace's default from the signal's head
    start; none where the owner cannot leave a hung process (``plan.leave_hung``: the debug executor)."""
    grace = config.stop_grace_s
    if grace is None:
        delay = launch.get("signal_delay_s")
        grace = default_stop_grace_s(plan.context.executor, None if delay is None else float(delay))
    watching = hung.leave is not None
    watchdog = Watchdog(
        signals, hung, grace if watching else None, config.step_timeout_s if watching else None
    )
    watchdog.start()
    return watchdog


def record_hang(manifest: RunManifest, segment: int, hang: Hang, rank: int, tracker: Tracker) -> bool:
    """Rank 0, on the watchdog's thread: the segment closed as ``hung`` at its step, W&B finished (bounded),
    the retry decided as for a failed step (retries.py); whether the process is to be requeued."""
    message = f"hung on rank {rank}: {hang.describe()} (every thread's stack is in the log)"
    try:
        fail_segment(manifest, segment, "hung", message, hang.step)
    except Exception as error:  # the manifest matters, but leaving matters more
        log.error("could not record the hang in the manifest: %s", error)
    tracker.finish(preempting=True)
    decision = after_failure(manifest.run_dir)
    print(decision.console_line(manifest.run_dir).replace(" failed (hung ", " hung (", 1), flush=True)
    return decision.retry
