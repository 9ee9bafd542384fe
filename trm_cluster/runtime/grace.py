"""Is the grace window long enough? What a stop needs, from what this run measured.

A stop signal (``--signal-delay-s`` before the time limit, or a preemption's grace time) must leave room
for the step in progress, the final (synchronous) save and the W&B finish. The session measures all
three; when the window is smaller than their sum times :data:`SAFETY`, it warns once, at the first
save whose time it knows, with the value to use, in the job's log and in the manifest (``status``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from trm_cluster.rundir import segments
from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.rundir.segment_timings import SegmentTimings

log = logging.getLogger(__name__)

SAFETY = 2.0
"""A stop must fit twice over: saves on a shared file system and W&B's finish vary a lot."""
DEFAULT_FINISH_S = {"disabled": 0.0, "offline": 5.0, "online": 30.0}
"""The W&B finish assumed until a segment of the run has measured one."""


def needed_signal_delay_s(step_s: float, save_s: float, finish_s: float) -> int:
    """The smallest ``--signal-delay-s`` that fits a stop :data:`SAFETY` times over (whole seconds)."""
    return max(1, math.ceil(SAFETY * (step_s + save_s + finish_s)))


def finish_estimate_s(segments: Sequence[Any], wandb_mode: str) -> float:
    """The slowest W&B finish an earlier segment measured, else a default for the mode."""
    measured = [s.timings.finish_s for s in segments if s.timings.finish_s is not None]
    return max(measured) if measured else DEFAULT_FINISH_S.get(wandb_mode, 30.0)


def grace_warning(signal_delay_s: float, step_s: float, save_s: float, finish_s: float) -> str | None:
    """The warning when ``signal_delay_s`` cannot fit a stop; None when it can."""
    needed = needed_signal_delay_s(step_s, save_s, finish_s)
    if signal_delay_s >= needed:
        return None
    return (
        f"--signal-delay-s {signal_delay_s:g} is too short for a stop here: a step takes {step_s:.2f} s, "
        f"the final save {save_s:.2f} s and the W&B finish about {finish_s:.1f} s; with a {SAFETY:g}x "
        f"margin use --signal-delay-s {needed} (submit --resume RUN --signal-delay-s {needed})"
    )


def advice_from_history(segments: Sequence[Any], wandb_mode: str, signal_delay_s: float) -> str | None:
    """``submit --resume``'s (and ``--fork``'s) advice: the warning for the slowest step and save the
    run's segments measured, against the signal delay of the new submission (None: it fits, or nothing
    was measured)."""
    measured = [
        s.timings for s in segments if s.timings.step_s is not None and s.timings.sync_save_s is not None
    ]
    if not measured:
        return None
    step_s = max(t.step_s for t in measured)
    save_s = max(t.sync_save_s for t in measured)
    return grace_warning(signal_delay_s, step_s, save_s, finish_estimate_s(segments, wandb_mode))


class GraceCheck:
    """One segment's check, made once: the mean step time up to the first save, that save's time, then
    (rank 0, on Slurm or local) the warning if a stop does not fit ``signal_delay_s``."""

    def __init__(self, timings: SegmentTimings, signal_delay_s: float | None, enabled: bool) -> None:
        self.timings = timings
        """The segment's record; ``step_s`` and ``sync_save_s`` are filled here."""
        self.signal_delay_s = signal_delay_s
        self.enabled = enabled
        self.done = False
        self._since = (time.time(), 0)

    def loop_started(self, step: int) -> None:
        self._since = (time.time(), step)

    def before_save(self, step: int) -> None:
        """Before the first save: the steps so far are steps only (their mean is ``step_s``)."""
        started, first = self._since
        if self.timings.step_s is None and step > first:
            self.timings.step_s = (time.time() - started) / (step - first)

    def saved(self, save_s: float | None) -> None:
        """A save's write time, once known (the first one counts)."""
        if self.timings.sync_save_s is None:
            self.timings.sync_save_s = save_s

    def check(self, earlier: Sequence[Any], wandb_mode: str) -> str | None:
        """Once the step and save times are known: the warning (None: it fits, or not checked here).
        ``earlier``: the run's previous segments (their slowest W&B finish)."""
        step_s, save_s = self.timings.step_s, self.timings.sync_save_s
        if self.done or step_s is None or save_s is None:
            return None
        self.done = True
        if not self.enabled or self.signal_delay_s is None:
            return None
        return grace_warning(self.signal_delay_s, step_s, save_s, finish_estimate_s(earlier, wandb_mode))

    def report(self, save_s: float | None, manifest: RunManifest, index: int, wandb_mode: str) -> None:
        """:meth:`saved`, then :meth:`check`; its warning, if any, logged and recorded on the segment
        ``index`` with the timings behind it (``status`` shows it)."""
        self.saved(save_s)
        warning = self.check(manifest.read().segments[:-1], wandb_mode)
        if warning is not None:
            log.warning("%s", warning)
            segments.record_warning(manifest, index, warning, self.timings)
