"""A step's durable state across ranks: who writes which file, and when it is published.

Every rank has its own part (its RNG streams and the state registered as per-rank, e.g. a data
position); the shared state (model, optimizer, schedule...) is the same on every rank and is written
once, by rank 0. Rank 0's own part rides in the main file (so a one-rank checkpoint is one file);
rank r's goes to ``step_N.rankR.pt``. The checkpoint is published in the manifest, by rank 0, only
after every part is durable: a checkpoint that the manifest names is always complete.

Loading: rank 0 picks the newest valid checkpoint (falling back past bad ones), every rank loads the
same step, each with its own part.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .checkpoint import CheckpointError, CheckpointStore, LoadedCheckpoint, capture
from .distributed import Ranks
from .manifest import ConfigChange, ManifestData, RunManifest, utc_now
from .state import capture_rng

log = logging.getLogger(__name__)


def save_step(
    store: CheckpointStore,
    ranks: Ranks,
    step: int,
    shared: Mapping[str, Any] | None,
    rank_state: Mapping[str, Any],
    tracking: Mapping[str, Any],
    data: ManifestData,
    total_steps: int,
) -> None:
    """Write this rank's part (and, on rank 0, the shared state, the W&B journal and the meta), then
    publish. ``shared`` is needed on rank 0 only: ``{"model": weights, ...rest}``."""
    part = {"rng": capture(capture_rng()), "rank_state": capture(dict(rank_state))}
    record = None
    if not ranks.is_main:
        meta = {"step": step, "rank": ranks.rank, "run_uid": data.run_uid}
        record = store.write_part(step, ranks.rank, {**part, "meta": meta})
    parts = ranks.gather(record)  # also: every part is durable once rank 0 has them all
    if ranks.is_main:
        assert shared is not None
        state = dict(shared)
        model = state.pop("model")
        meta = {
            "format": 1,
            "step": step,
            "total_steps": total_steps,
            "world_size": ranks.world_size,
            "run_uid": data.run_uid,
            "run_name": data.name,
            "workload": data.workload,
            "config": data.config,
            "saved_at": utc_now(),
        }
        payload = {"model": model, "trainer": state, **part, "tracking": dict(tracking), "meta": meta}
        store.save(step, payload, parts=[p for p in parts if p is not None])
    ranks.barrier()  # published: no rank runs ahead of a checkpoint that is not in the manifest yet


def load_step(store: CheckpointStore, ranks: Ranks, run_uid: str) -> LoadedCheckpoint | None:
    """The newest valid checkpoint (rank 0 decides), loaded on every rank with that rank's own part."""
    chosen = store.load_latest(run_uid) if ranks.is_main else None
    step = ranks.broadcast(chosen.record.step if chosen is not None else None)
    if step is None:
        return None
    return chosen if ranks.is_main else store.load_step(step, ranks.rank, run_uid)


def accept_world_size(manifest: RunManifest, ranks: Ranks, saved: int, step: int) -> bool:
    """Whether the run has the checkpoint's number of ranks; another number is refused unless allowed.

    Allowed (``--allow-world-size-change``): model and optimizer come back, the per-rank streams are
    re-derived from (run, step, rank), and rank 0 records the change as a config change.
    """
    now = ranks.world_size
    if saved == now:
        return True
    if not manifest.read().launch.get("allow_world_size_change"):
        raise CheckpointError(
            f"the checkpoint of step {step} was written by {saved} ranks, this run has {now}: a resume is "
            "exact only with the same number; pass --allow-world-size-change to continue anyway"
        )
    if ranks.is_main:
        with manifest.update() as data:
            data.config_changes.append(
                ConfigChange(at_step=step, time=utc_now(), changes={"world_size": [saved, now]})
            )
        log.warning("world size %d -> %d at step %d: model and optimizer restored, per-rank RNG streams and "
                    "per-rank state re-derived (not an exact continuation)", saved, now, step)  # fmt: skip
    return False


def rank_part(payload: Mapping[str, Any], rank: int) -> Mapping[str, Any]:
    """This rank's own part of a loaded checkpoint: ``{"rng", "rank_state"}``."""
    if rank == 0:
        return {"rng": payload["rng"], "rank_state": payload.get("rank_state", {})}
    part: Mapping[str, Any] = payload["rank_part"]
    return part
