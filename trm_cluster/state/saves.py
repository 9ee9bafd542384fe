"""Every checkpoint save of one segment: staged at a step boundary, written now or in the background,
joined, and a failed write reported instead of ending the run.

Why its own object: the session (session.py) decides *when* to save (a period, a stop, the end);
this decides *how* (snapshot.py's stage and write, background_save.py's writer thread, the goodput clock),
so the requeue path in the session reads top to bottom without the details of a save.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from trm_cluster.core.digest import weights_sha256
from trm_cluster.core.distributed import Ranks
from trm_cluster.rundir.checkpoints import CheckpointStore, capture
from trm_cluster.rundir.manifest import ManifestData, RunManifest
from trm_cluster.rundir.segment_clock import SegmentClock
from trm_cluster.rundir.segment_timings import SegmentTimings
from trm_cluster.rundir.segments import record_failed_save
from trm_cluster.state.background_save import BackgroundSaver, snapshot_copy
from trm_cluster.state.registered import StateSource
from trm_cluster.state.sharded import save_sharded_in_background, sharded_name
from trm_cluster.state.snapshot import StagedStep, stage_step, write_step

log = logging.getLogger(__name__)


class SavePath:
    """One segment's saves; at most one in flight (``saver``), every one timed as saving (goodput)."""

    def __init__(
        self, ranks: Ranks, store: CheckpointStore, manifest: RunManifest, segment: int, clock: SegmentClock
    ) -> None:
        self.ranks, self.store, self.manifest, self.segment, self.clock = (
            ranks,
            store,
            manifest,
            segment,
            clock,
        )
        self.saver = BackgroundSaver()
        """The periodic saves written in the background, and their counts (``saver.stats``)."""
        self.saved_step = -1
        """The step of the newest save made (a background one may still be in flight)."""
        self.sync_save_s: float | None = None
        """The first synchronous save's time on the training thread (the grace check's save time)."""
        self.final_digest: str | None = None
        """The weights' sha256 of the save at the run's last step (the job's summary)."""
        self._source: StateSource | None = None
        self._require_model = False
        self._tracking: Callable[[], Mapping[str, Any]] = dict
        self._data: ManifestData | None = None
        self._total_steps = 0

    def attach(
        self,
        source: StateSource,
        require_model: bool,
        tracking: Callable[[], Mapping[str, Any]],
        data: ManifestData,
        total_steps: int,
        saved_step: int,
    ) -> None:
        """What every save holds, known once the state is restored: the state's source, the W&B journal
        and log window (``tracking``), the run (``data``) and ``saved_step``, the step restored."""
        self._source, self._require_model, self._tracking = source, require_model, tracking
        self._data, self._total_steps, self.saved_step = data, total_steps, saved_step

    @property
    def source(self) -> StateSource | None:
        return self._source

    @property
    def write_s(self) -> float | None:
        """A save's write time: the first synchronous one, else the first background write (which stands
        in for the final, synchronous save); None before either."""
        if self.sync_save_s is not None:
            return self.sync_save_s
        return self.saver.stats.write_s[0] if self.saver.stats.write_s else None

    def count_into(self, timings: SegmentTimings) -> None:
        """The segment's record of its background saves, and of the requests that waited for one."""
        timings.background_saves, timings.save_waits = self.saver.stats.started, self.saver.stats.waited

    def save(self, step: int, background: bool = False) -> None:
        """The full state of ``step``, every rank's part durable, then published (snapshot.py).
        ``background``: copied now, written and published by the writer thread (background_save.py).
        The time the loop waits for it counts as saving (goodput); a background write's does not."""
        with self.clock.saving():
            self._save_now(step, background)

    def _save_now(self, step: int, background: bool) -> None:
        assert self._source is not None and self._data is not None, "attach() first"
        began = time.perf_counter()
        self.saver.begin()  # at most one save in flight: wait for the previous one (counted)
        sharded = getattr(self._source, "sharded", None)
        shared = None
        if self.ranks.is_main:  # the shared state is the same on every rank: rank 0 writes it
            shared = self._source.state_dict()
            shared = dict(shared) if background else capture(shared)  # never the trainer's own dict
            if "model" not in shared and self._require_model:
                raise TypeError("Trainer.state_dict() must hold the model weights under 'model'")
            shared.setdefault("model", {})
        rank_state: dict[str, Any] = getattr(self._source, "rank_state_dict", dict)()
        staged = stage_step(
            self.ranks,
            step,
            shared,
            rank_state,
            self._tracking(),
            self._data,
            self._total_steps,
            not background,
        )
        if sharded and background:  # DCP copies the shards now and writes them on its own thread
            group = self.ranks.for_background_saves().control
            directory = self.store.directory / sharded_name(step)
            pending = save_sharded_in_background(sharded.state_dict(), directory, group)
            staged = dataclasses.replace(staged, sharded_pending=pending)
        elif sharded:
            staged = dataclasses.replace(staged, sharded=sharded.state_dict())
        self.saved_step = step
        if background:
            copied = snapshot_copy(
                {"rank": staged.rank_payload, "main": staged.main_payload}, self.saver.buffers
            )

            def write() -> None:
                state = copied.wait()
                staged_copy = StagedStep(
                    staged.step, state["rank"], state["main"], sharded_pending=staged.sharded_pending
                )
                write_step(self.store, self.ranks.for_background_saves(), staged_copy)

            self.saver.start(write, began)
            return
        write_step(self.store, self.ranks, staged)
        if self.sync_save_s is None:
            self.sync_save_s = time.perf_counter() - began
        if step >= self._total_steps and shared is not None and not sharded:  # sharded: in the DCP files
            self.final_digest = weights_sha256(shared["model"])
            self.store.record_weights_digest(step, self.final_digest)

    def save_or_report(self, step: int, background: bool = False) -> bool:
        """A periodic or stop-time save whose write fails (disk full, quota: OSError) is reported in the log
        and the manifest, not fatal: the write is atomic and was never published, so the previous
        checkpoint and the manifest are intact; training goes on, and a stop requeues from the last good
        checkpoint. (Several ranks: raised, a rank that fails alone cannot leave the others waiting.) A
        background write's failure surfaces here too: at the next save, or when the stop joins it."""
        try:
            if background:
                self.save(step, background=True)
            else:
                self.save_if_unsaved(step)  # joins a save in flight first
        except OSError as error:
            if self.ranks.distributed:
                raise
            log.error("checkpoint at step %d not written (%s); the last good one is kept", step, error)
            record_failed_save(self.manifest, self.segment, step, error)
            return False
        return True

    def join(self) -> None:
        """The save in flight is durable (or its error raised) before anything else happens."""
        with self.clock.saving():
            self.saver.wait()

    def save_if_unsaved(self, step: int) -> None:
        self.join()
        if self.saved_step != step:
            self.save(step)

    def join_quietly(self) -> None:
        """A failing run: a save in flight is a valid checkpoint, let it become durable; its own error
        is logged, never raised over the run's."""
        try:
            self.saver.wait()
        except Exception as save_error:
            log.error("the background save in flight failed too: %s", save_error)


def may_save_in_background(done: int, total_steps: int, sync_checkpoints: bool) -> bool:
    """Every periodic save but the last step's (the end must be durable before the segment closes).
    The same answer on every rank, from nothing a rank holds alone: a stop reaches ranks at different
    boundaries, and one rank saving synchronously while another saves in the background would pair
    different collectives and hang. A save that a stop follows is joined by the stop."""
    return not sync_checkpoints and done < total_steps
