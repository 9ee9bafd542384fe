"""Is the open segment still stepping? Seconds since its last step boundary (from the heartbeat) against
the run's measured step time.

Why: a step that never returns left ``status`` saying ``running 30/200`` for as long as anyone looked. The
watchdog (runtime/watchdog.py) ends such a process where its limits are set; this is what a reader sees
either way, including a process that froze before its watchdog could act (SIGSTOP, a dead node).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from trm_cluster.rundir.heartbeat import INTERVAL_S, read_beat
from trm_cluster.rundir.manifest import ManifestData

STALL_FLOOR_S = 120.0
"""Never stalled below this: the heartbeat is written at most every few seconds, and a startup (imports,
restore, W&B, the first step) or a save takes a while."""
STALL_FACTOR = 20.0
"""Stalled past this many times the run's mean step time (an evaluation step is slower than most)."""


@dataclass(frozen=True)
class Liveness:
    last_step_age_s: float | None
    """Seconds since the open segment's last step boundary (its start before the first); None: none open."""
    step_s: float | None
    """The run's mean step time so far (None before any step)."""
    stalled: bool

    def describe(self) -> str | None:
        if self.last_step_age_s is None:
            return None
        age = f"last step boundary {self.last_step_age_s:.0f} s ago"
        if self.step_s is not None:
            age += f" (steps take {self.step_s:.2g} s)"
        return f"STALLED: {age}: a hung step?" if self.stalled else age


def training_speed(data: ManifestData) -> float | None:
    """Steps per second of training, summed over segments; an open one counts up to its newest checkpoint
    (its process may be dead, so "now" would understate the speed)."""
    steps, seconds = 0, 0.0
    for s in data.segments:
        end_step, end_time = s.end_step, s.end_time
        if end_time is None:
            if not data.checkpoints or data.checkpoints[-1].step <= s.start_step:
                continue
            end_step, end_time = data.checkpoints[-1].step, data.checkpoints[-1].created_at
        if end_step is None:
            continue
        steps += end_step - s.start_step
        seconds += (datetime.fromisoformat(end_time) - datetime.fromisoformat(s.start_time)).total_seconds()
    return steps / seconds if steps > 0 and seconds > 0 else None


def liveness(run_dir: Path, data: ManifestData, now: float | None = None) -> Liveness:
    """The open segment's age since its last step boundary, and whether that is far beyond a step."""
    segment = data.open_segment
    if segment is None:
        return Liveness(None, None, False)
    now = time.time() if now is None else now
    beat = read_beat(run_dir, segment.index)
    last = beat.time if beat is not None else datetime.fromisoformat(segment.start_time).timestamp()
    age = max(now - last, 0.0)
    speed = training_speed(data)
    step_s = 1 / speed if speed else None
    if beat is not None and beat.step > segment.start_step:  # this segment's own pace, where it has one
        first = segment.timings.first_step_time
        if first is not None and beat.step > segment.start_step + 1:
            step_s = (beat.time - datetime.fromisoformat(first).timestamp()) / (
                beat.step - segment.start_step - 1
            )
    limit = max(STALL_FLOOR_S, STALL_FACTOR * (step_s or 0.0), 2 * INTERVAL_S)
    return Liveness(age, step_s, age > limit)
