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

from collections.abc import Mapping
from typing import Any

from .checkpoint import CheckpointStore, LoadedCheckpoint, capture
from .distributed import Ranks
from .state import capture_rng


def save_step(
    store: CheckpointStore,
    ranks: Ranks,
    step: int,
    shared: Mapping[str, Any] | None,
    rank_state: Mapping[str, Any],
    extra: Mapping[str, Any],
) -> None:
    """Write this rank's part (and, on rank 0, the shared state and ``extra``), then publish.

    ``shared`` is needed on rank 0 only: ``{"model": weights, ...rest}``; ``extra`` holds the
    payload's other top-level entries (tracking, meta).
    """
    part = {"rng": capture(capture_rng()), "rank_state": capture(dict(rank_state))}
    record = None
    if not ranks.is_main:
        meta = {"step": step, "rank": ranks.rank, "run_uid": extra["meta"]["run_uid"]}
        record = store.write_part(step, ranks.rank, {**part, "meta": meta})
    parts = ranks.gather(record)  # also: every part is durable once rank 0 has them all
    if ranks.is_main:
        assert shared is not None
        state = dict(shared)
        model = state.pop("model")
        meta = {**extra["meta"], "world_size": ranks.world_size}
        payload = {"model": model, "trainer": state, **part, **extra, "meta": meta}
        store.save(step, payload, parts=[p for p in parts if p is not None])
    ranks.barrier()  # published: no rank runs ahead of a checkpoint that is not in the manifest yet


def load_step(store: CheckpointStore, ranks: Ranks, run_uid: str) -> LoadedCheckpoint | None:
    """The newest valid checkpoint (rank 0 decides), loaded on every rank with that rank's own part."""
    chosen = store.load_latest(run_uid) if ranks.is_main else None
    step = ranks.broadcast(chosen.record.step if chosen is not None else None)
    if step is None:
        return None
    return chosen if ranks.is_main else store.load_step(step, ranks.rank, run_uid)


def rank_part(payload: Mapping[str, Any], rank: int) -> Mapping[str, Any]:
    """This rank's own part of a loaded checkpoint: ``{"rng", "rank_state"}``."""
    if rank == 0:
        return {"rng": payload["rng"], "rank_state": payload.get("rank_state", {})}
    part: Mapping[str, Any] = payload["rank_part"]
    return part
