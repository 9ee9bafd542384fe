"""A training process's heartbeat: its step and save time, a few times a minute, in ``heartbeat.json``.

Why: a SIGKILLed process closes nothing. The next process reads the heartbeat to learn how far the dead
one got past its last durable checkpoint (the steps it must recompute) and how long it spent saving, so
``status`` can say what the kill cost; and a process of another host reads it to tell a live holder of
the run's lease from a dead one (lease.py). Not a durable record (no fsync): a lost heartbeat only makes
the estimate conservative.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .environment import pid_exists
from .lease import ensure_held
from .manifest import RunManifest, utc_now
from .segment_timings import SegmentTimings

HEARTBEAT_NAME = "heartbeat.json"
INTERVAL_S = 5.0
"""At most one write per interval: a few hundred bytes, far below a step's cost."""


@dataclass(frozen=True)
class Beat:
    segment: int
    step: int
    time: float
    save_s: float


class Heartbeat:
    """Writes this segment's beats (rank 0 only), at most every :data:`INTERVAL_S` seconds."""

    def __init__(self, run_dir: Path, segment: int, interval_s: float = INTERVAL_S) -> None:
        self.path = Path(run_dir) / HEARTBEAT_NAME
        self.segment = segment
        self.interval_s = interval_s
        self._last = -float("inf")

    def due(self) -> bool:
        """Whether the interval since the last beat has passed."""
        return time.time() - self._last >= self.interval_s

    def beat(self, step: int, save_s: float) -> None:
        if self._last == -float("inf"):  # this segment's first beat: a killed writer's leftovers go
            remove_stale_temp_files(self.path.parent)
        self._last = now = time.time()
        payload = {"segment": self.segment, "step": step, "time": now, "save_s": save_s}
        tmp = self.path.with_name(f"{TEMP_PREFIX}{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(payload))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a heartbeat is an estimate; training never stops for it


TEMP_PREFIX = f".{HEARTBEAT_NAME}."


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Remove ``.heartbeat.json.<pid>.tmp`` files of processes that are gone (a SIGKILL between the
    write and the rename leaves one per kill); return them. Only the beating rank 0 calls this: its
    peers on other nodes would not see the writer's pid. A pid alive on this host is kept, since
    another host's leftover may share a live local number (harmless: a few hundred bytes)."""
    removed = []
    for tmp in Path(run_dir).glob(f"{TEMP_PREFIX}*.tmp"):
        pid = tmp.name[len(TEMP_PREFIX) : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_exists(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def read_beat(run_dir: Path, segment: int) -> Beat | None:
    """The last beat of ``segment``, if the heartbeat file is that segment's and readable."""
    try:
        raw: dict[str, Any] = json.loads((Path(run_dir) / HEARTBEAT_NAME).read_text())
        beat = Beat(int(raw["segment"]), int(raw["step"]), float(raw["time"]), float(raw["save_s"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return beat if beat.segment == segment else None


class SegmentClock:
    """What one segment measures for goodput on rank 0: time saving, its first step, its heartbeat,
    kept in the segment's one timing record (segment_timings.py), which reaches the manifest at the
    first step (the close writes it again, complete)."""

    def __init__(
        self,
        manifest: RunManifest,
        segment: int,
        enabled: bool,
        timings: SegmentTimings,
        beat_every_s: float = INTERVAL_S,
    ) -> None:
        self.manifest = manifest
        self.segment = segment
        self.enabled = enabled
        self.timings = timings
        self.last_save_s: float | None = None
        self._heartbeat = Heartbeat(manifest.run_dir, segment, beat_every_s)
        self._first_done = False

    @property
    def save_s(self) -> float:
        return self.timings.save_s or 0.0

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.last_save_s = time.perf_counter() - started
            self.timings.save_s = self.save_s + self.last_save_s

    def step_done(self, step: int) -> None:
        if not self.enabled:
            return
        if not self._first_done:  # startup (imports, restore, W&B init, the first step) ends here
            self._first_done = True
            self.timings.first_step_time = utc_now()
            with self.manifest.update() as data:
                ensure_held(data, self.segment)
                data.segments[self.segment].timings = dataclasses.replace(self.timings)
        elif self._heartbeat.due():  # a few times a minute: still the run's holder? (lease.py)
            ensure_held(self.manifest.read(), self.segment)  # never beat over the new holder's heartbeat
        else:
            return
        self._heartbeat.beat(step, self.save_s)
