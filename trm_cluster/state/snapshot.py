"""A step's durable state across ranks: who writes which file, and when it is published.

Every rank has its own part (its RNG streams and the state registered as per-rank, e.g. a data
position); the shared state (model, optimizer, schedule...) is the same on every rank and is written
once, by rank 0. Rank 0's own part rides in the main file (so a one-rank checkpoint is one file);
rank r's goes to ``step_N.rankR.pt``. The checkpoint is published in the manifest, by rank 0, only
after every part is durable: a checkpoint that the manifest names is always complete. A save is
staged (:func:`stage_step`, at the step boundary) and then written (:func:`write_step`): both on the
training thread for a synchronous save, the write on background_save's writer thread for a background one.

Sharded state (an FSDP2 model and its optimizer, state/sharded.py) is written by every rank into the
step's DCP directory before the parts are gathered: its files are parts of the checkpoint too, published
with the rest once every rank's are durable.

Loading: rank 0 picks the newest valid checkpoint (falling back past bad ones), every rank loads the
same step, each with its own part, and the sharded state from the step's directory, resharded to the
current ranks.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from trm_cluster.core.distributed import Ranks
from trm_cluster.core.rng import capture_rng, derived_seed, restore_rng, seed_everything
from trm_cluster.rundir.checkpoints import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointStore,
    LoadedCheckpoint,
    capture,
)
from trm_cluster.rundir.manifest import ConfigChange, ManifestData, RunManifest, utc_now
from trm_cluster.rundir.segments import add_segment_warning
from trm_cluster.state.sharded import ShardedState, save_sharded, sharded_files, sharded_name

log = logging.getLogger(__name__)


def _dcp_errors() -> tuple[type[BaseException], ...]:
    """DCP's CheckpointException (a write's error, raised on every rank), once DCP is imported."""
    api = sys.modules.get("torch.distributed.checkpoint.api")
    return (api.CheckpointException,) if api is not None else ()


@dataclass(frozen=True)
class StagedStep:
    """A step's state as it is written: this rank's part, and on rank 0 the full main payload."""

    step: int
    rank_payload: dict[str, Any] | None
    """Rank r > 0: ``{"rng", "rank_state", "meta"}`` for ``step_N.rankR.pt``; None on rank 0."""
    main_payload: dict[str, Any] | None
    """Rank 0: ``{"model", "trainer", "rng", "rank_state", "tracking", "meta"}``; None elsewhere."""
    sharded: dict[str, Any] | None = None
    """Every rank, for sharded state: this rank's shards by registered name (state/sharded.py)."""
    sharded_pending: Future[Any] | None = None
    """Instead, for a background save: the shards already being written by DCP's thread."""


def stage_step(
    ranks: Ranks,
    step: int,
    shared: Mapping[str, Any] | None,
    rank_state: Mapping[str, Any],
    tracking: Mapping[str, Any],
    data: ManifestData,
    total_steps: int,
    on_cpu: bool = True,
) -> StagedStep:
    """What :func:`write_step` writes, taken at the step boundary (the RNG streams now).
    ``shared`` is needed on rank 0 only: ``{"model": weights, ...rest}``. ``on_cpu=False`` leaves the
    tensors where they are, for a background save that copies them itself (background_save.snapshot_copy)."""
    take = capture if on_cpu else _as_is
    part = {"rng": take(capture_rng()), "rank_state": take(dict(rank_state))}
    if not ranks.is_main:
        meta = {"step": step, "rank": ranks.rank, "run_uid": data.run_uid}
        return StagedStep(step, {**part, "meta": meta}, None)
    assert shared is not None
    state = dict(shared)
    model = state.pop("model")
    meta = {
        "format": FORMAT_VERSION,
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
    return StagedStep(step, None, payload)


def _as_is(state: Any) -> Any:
    return state


def write_step(store: CheckpointStore, ranks: Ranks, staged: StagedStep) -> None:
    """Write this rank's part (rank 0: the main file), then rank 0 publishes once every part is durable.

    Collective with several ranks: every rank calls it for the same step, all on their training thread
    or all on their writer thread (``ranks.for_background_saves()``). A rank whose write fails still
    takes part in both collectives, so no rank waits for it: rank 0 then publishes nothing, the failing
    rank raises its error and the others an OSError naming it."""
    own: BaseException | None = None
    written: list[dict[str, Any]] = []
    record: list[dict[str, Any]] | str = written
    try:
        directory = store.directory / sharded_name(staged.step)
        if staged.sharded is not None:  # collective: every rank writes its shards
            save_sharded(staged.sharded, directory, ranks.control)
        if staged.sharded_pending is not None:
            staged.sharded_pending.result()
        if staged.sharded is not None or staged.sharded_pending is not None:
            written += sharded_files(directory, ranks.rank)
        if staged.rank_payload is not None:
            written.append(store.write_part(staged.step, ranks.rank, staged.rank_payload))
    except (OSError, *_dcp_errors()) as error:  # type: ignore[misc]  # a tuple of exception classes  # DCP raises a write's error on every rank as its own
        own, record = error, f"rank {ranks.rank}: {error}"
    gathered = ranks.gather(record)  # also: every part is durable once rank 0 has them all
    failed = "; ".join(p for p in gathered if isinstance(p, str))
    parts = [part for rank_parts in gathered if isinstance(rank_parts, list) for part in rank_parts]
    if staged.main_payload is not None and not failed:
        try:
            store.save(staged.step, staged.main_payload, parts=parts)
        except OSError as error:
            own, failed = error, f"rank 0: {error}"
    # published, or not on every rank: none runs ahead of a checkpoint that is not in the manifest yet
    failed = ranks.broadcast(failed)
    if own is not None:
        raise own
    if failed:
        raise OSError(f"the checkpoint of step {staged.step} was not written: {failed}")


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


class StateTarget(Protocol):
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def restore_step(
    loaded: LoadedCheckpoint,
    target: StateTarget,
    manifest: RunManifest,
    ranks: Ranks,
    run_uid: str,
    skip_rng: bool = False,
) -> Mapping[str, Any]:
    """Load a checkpoint into ``target`` (its ``load_rank_state_dict`` too, if it has one), then this
    rank's RNG streams, last, so that loading consumes none of them (re-derived from the run, step and
    rank when the number of ranks changed). Returns the checkpoint's meta and tracking:
    ``{"step", "total_steps", "tracking"}``."""
    payload = loaded.payload
    meta = payload["meta"]
    step = int(meta["step"])
    same_ranks = accept_world_size(manifest, ranks, int(meta.get("world_size", 1)), step)
    state = dict(payload["trainer"])
    state.setdefault("model", payload["model"])
    target.load_state_dict(state)
    load_sharded(loaded, target, manifest, ranks)
    for warning in getattr(target, "warnings", ()):  # e.g. the script's new hyperparameters overridden
        log.warning("%s", warning)
        if ranks.is_main:
            add_segment_warning(manifest, warning)
    own = rank_part(payload, ranks.rank) if same_ranks else None
    if own is not None and hasattr(target, "load_rank_state_dict"):
        target.load_rank_state_dict(own["rank_state"])
    if skip_rng:  # the doctor's control: the streams stay as the process made them (a planted bug)
        log.warning("the RNG streams are not restored (the resume doctor's control run)")
    elif own is not None:  # last: building and loading must not consume the restored streams
        restore_rng(own["rng"])
    else:
        seed_everything(derived_seed(run_uid, step, ranks.rank))
    return {"step": step, "total_steps": meta.get("total_steps"), "tracking": payload.get("tracking", {})}


def load_sharded(loaded: LoadedCheckpoint, target: StateTarget, manifest: RunManifest, ranks: Ranks) -> None:
    """Every rank reads its shards from the step's DCP directory (collective); a checkpoint and a loop
    that disagree on what is sharded are refused, never mixed."""
    sharded: ShardedState | None = getattr(target, "sharded", None)
    files = [part["file"] for part in loaded.record.parts if part.get("sharded")]
    wanted = sorted(sharded.names) if sharded else []
    if bool(files) != bool(wanted):
        held = "sharded state (a DCP directory)" if files else "no sharded state"
        raise CheckpointError(
            f"the checkpoint of step {loaded.record.step} holds {held}, but this loop registers "
            f"{'the sharded ' + ', '.join(wanted) if wanted else 'no sharded model'}: a sharded run resumes "
            "only as a sharded run (and a replicated one as replicated)"
        )
    if sharded and files:
        directory = manifest.run_dir / files[0].rsplit("/", 1)[0]
        load = getattr(target, "load_sharded", sharded.load)  # RegisteredState's checks hyperparameters
        load(directory, ranks.control)
