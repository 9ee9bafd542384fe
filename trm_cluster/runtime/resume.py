"""The restore step of a segment (``run.restore``): the newest valid checkpoint loaded into the registered
state while W&B starts beside it, then the W&B run resumed above its watermark.

Why its own module: the session reads as the path of a segment; how a load and ``wandb.init`` overlap,
and what each costs, is one concern of its own. W&B's thread is joined before any RNG stream is
restored, so nothing it does can draw from them.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from trm_cluster.core.distributed import Ranks
from trm_cluster.core.rng import rng_fingerprint
from trm_cluster.rundir import segments
from trm_cluster.rundir.checkpoints import CheckpointStore
from trm_cluster.rundir.manifest import ManifestData, RunManifest, Segment
from trm_cluster.runtime.plan import SKIP_RNG_RESTORE_ENV, SessionPlan
from trm_cluster.state.registered import RegisteredState, StateSource
from trm_cluster.state.snapshot import load_step, restore_step
from trm_cluster.wandb.tracker import NullTracker, Tracker, WandbStart, WandbTracker, resumed_tracker

log = logging.getLogger(__name__)


@dataclass
class Resumed:
    """Where the segment starts, and what the restore brought back besides the registered state."""

    step: int
    data: ManifestData
    tracker: Tracker
    window: dict[str, Any] = field(default_factory=dict)
    """The step log's open window, as saved."""
    saved_total_steps: int | None = None
    restored_rng: str | None = None
    """The RNG streams' fingerprint right after the restore (None for a fresh start)."""
    load_s: float = 0.0
    wandb_init_s: float = 0.0
    """What of ``wandb.init`` the load did not hide."""


def resume_segment(
    manifest: RunManifest,
    plan: SessionPlan,
    segment: Segment,
    data: ManifestData,
    killed: Segment | None,
    ranks: Ranks,
    store: CheckpointStore,
    source: StateSource,
) -> Resumed:
    """Load and restore the newest valid checkpoint (``killed``: the previous process's open segment, whose
    W&B writer must be gone first); a failure finishes the W&B run it started, as failed."""
    start = None
    if data.wandb.mode != "disabled" and ranks.is_main:  # overlaps the load
        start = WandbStart(data, plan.run_dir, plan.wandb_resume, plan.quiet, killed)
    tracker: Tracker = NullTracker()
    try:
        began = time.time()
        loaded = load_step(store, ranks, data.run_uid)
        load_s, waited = time.time() - began, time.time()
        if start is not None:
            tracker, start = start.join(), None
        wandb_wait_s, restoring = time.time() - waited, time.time()
        resumed = Resumed(0, data, tracker)
        journal: Any = ()
        if loaded is not None:
            skip_rng = os.environ.get(SKIP_RNG_RESTORE_ENV) == "1"  # the doctor's control run only
            restored = restore_step(loaded, source, manifest, ranks, data.run_uid, skip_rng)
            resumed.data, resumed.restored_rng = manifest.read(), rng_fingerprint()
            resumed.step = restored["step"]
            if ranks.is_main and resumed.step != segment.start_step:  # fell back past a bad file
                segments.record_start_step(manifest, segment.index, resumed.step)
            journal = restored["tracking"].get("journal", ())
            resumed.window = restored["tracking"].get("window", {})
            saved = restored["total_steps"]
            resumed.saved_total_steps = None if saved is None else int(saved)
        replaying = time.time()
        resumed.load_s = load_s + (replaying - restoring)
        resumed.tracker = resumed_tracker(tracker, resumed.data, journal, resumed.step)
        if isinstance(resumed.tracker, WandbTracker):  # started, even where its folder is outside the run's
            segments.record_wandb_started(manifest, segment.index, resumed.tracker.segment_dir)
        resumed.wandb_init_s = wandb_wait_s + (time.time() - replaying)
        return resumed
    except BaseException:
        if start is not None:  # failed while W&B was starting: its run is finished too
            start.abandon()
        tracker.finish(preempting=False, failed=True)
        raise


def warn_at_loop_start(restored_rng: str | None, source: StateSource | None, step: int) -> None:
    """What a resumed process does differently from an uninterrupted one between ``run.restore()`` and its
    first step: RNG drawn there, or state the restore did not bring back (``RegisteredState.loop_started``)."""
    if restored_rng is None:
        return
    if rng_fingerprint() != restored_rng:
        log.warning(
            "the global RNG was drawn from between run.restore() and the first step, so this resumed "
            "process draws other numbers than an uninterrupted run; call run.restore() right before the loop"
        )
    for warning in source.loop_started(step) if isinstance(source, RegisteredState) else ():
        log.warning("%s", warning)
