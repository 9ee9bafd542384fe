"""Deferred stop signals: the handler only records the request; the loop acts at a step boundary.

submitit's own USR2 handler checkpoints and requeues inside the handler, i.e. at whatever bytecode the
loop was executing (mid ``optimizer.step()``), and SIGTERM is merely logged. :class:`StopSignals`
replaces both with a handler that notes the first request and returns; the previous handlers are
kept so the job can hand over to submitit's requeue path once the state is safely on disk.
"""

from __future__ import annotations

import atexit
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def preempt_signal() -> signal.Signals:
    """The signal submitit and Slurm use for "save and requeue" (USR2 unless SUBMITIT_PREEMPT_SIGNAL)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
    return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]


@dataclass(frozen=True)
class StopRequest:
    signum: int
    received_at: float

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


STARTUP: list[StopRequest] = []
"""A stop request that arrived while the job's process was still starting (see :func:`defer_at_startup`)."""


def defer_at_startup() -> None:
    """Record stop signals that arrive while a submitit job's process imports its modules.

    submitit installs its handlers only after it has unpickled the job, which imports the job's modules
    (torch, wandb: seconds, many on a loaded node). A preemption or time-limit signal in that window
    would meet the default action, "terminate": the task dies unrequeued and Slurm marks the job FAILED.
    Called when the package is imported inside a job; :meth:`StopSignals.install` takes the request over,
    so the job saves and requeues at its first step boundary. Only handlers still at the default change.
    """
    for signum in dict.fromkeys((preempt_signal(), signal.SIGTERM)):
        try:
            if signal.getsignal(signum) == signal.SIG_DFL:
                signal.signal(signum, _record_at_startup)
        except ValueError:  # imported outside the main thread: only the main thread sets handlers
            return


def _record_at_startup(signum: int, frame: FrameType | None) -> None:
    if not STARTUP:
        STARTUP.append(StopRequest(signum, time.time()))


class StopSignals:
    """Record stop requests (the preemption signal and SIGTERM) instead of acting on them."""

    def __init__(self) -> None:
        self.signals: tuple[signal.Signals, ...] = tuple(dict.fromkeys((preempt_signal(), signal.SIGTERM)))
        self._previous: dict[int, Handler] = {}
        self._owner_pid = os.getpid()
        self.request: StopRequest | None = None
        self.repeats = 0

    def install(self) -> None:
        self._owner_pid = os.getpid()
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._record)
        if STARTUP and self.request is None:  # the signal that came while the process was starting
            self.request = STARTUP.pop()
        _end_term_ignoring_children_at_exit()

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def previous_handler(self, signum: int) -> Handler:
        return self._previous.get(signum)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of arbitrary code: no locks, no I/O, no allocation-heavy work.
        if os.getpid() != self._owner_pid:
            return  # a forked child (e.g. a DataLoader worker) inherited this handler: not ours to act on
        if self.request is None:
            self.request = StopRequest(signum, time.time())
        else:
            self.repeats += 1


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """Use as a DataLoader ``worker_init_fn``: workers must neither die of USR2 nor act on it.

    Such a worker also outlives multiprocessing's own end of daemon children at exit (SIGTERM, then a
    join forever); :meth:`StopSignals.install` registers their SIGKILL at exit instead."""
    for signum in (preempt_signal(), signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


_EXIT_HOOK: list[bool] = []


def _end_term_ignoring_children_at_exit() -> None:
    """Register (once) the SIGKILL at exit of this process's daemon children that ignore SIGTERM.

    multiprocessing ends daemon children at exit with SIGTERM and then joins them: a DataLoader worker
    that ignores SIGTERM (:func:`ignore_stop_signals`) and whose iterator was never shut down would make
    the exiting trainer wait forever. atexit runs the hooks registered last first, so this runs before
    multiprocessing's own (registered when it was imported)."""
    if not _EXIT_HOOK:
        _EXIT_HOOK.append(True)
        atexit.register(_kill_term_ignoring_daemon_children)


def _kill_term_ignoring_daemon_children() -> None:
    import multiprocessing
    import threading

    if threading.current_thread() is threading.main_thread():
        # torch's SIGCHLD handler raises when a loader worker dies of a signal: here, in the middle of this
        # loop, it left the other workers alive, and multiprocessing's join then waited on them forever
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon and child.pid is not None and _ignores_sigterm(child.pid):
            try:
                child.kill()
            except OSError:  # gone already
                continue


def _ignores_sigterm(pid: int) -> bool:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except (OSError, ValueError):
        pass
    return False
