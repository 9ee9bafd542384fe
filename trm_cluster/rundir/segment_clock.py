"""One segment's own clock for goodput: time spent saving, its first step, and its heartbeat, written to
the manifest's record of the segment (segment_timings.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator

from trm_cluster.rundir.heartbeat import INTERVAL_S, Heartbeat
from trm_cluster.rundir.lease import ensure_held
from trm_cluster.rundir.manifest import RunManifest, utc_now
from trm_cluster.rundir.segment_timings import SegmentTimings


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
