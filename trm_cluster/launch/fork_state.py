"""``submit --fork``'s state: the parent's checkpoint at the fork point, read and verified, re-owned by
the child and published as the child's first checkpoint.

Apart from ``launch/fork.py`` (the fork point and the advice) because only this part reads and writes
checkpoints, hence torch: ``submit`` imports it when it forks, and no other request pays for it.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.launch.fork import ForkPoint, fork_step
from trm_cluster.launch.runs import config_differences
from trm_cluster.rundir.checkpoints import CheckpointError, CheckpointStore
from trm_cluster.rundir.creation import create_run
from trm_cluster.rundir.manifest import (
    CheckpointRecord,
    ConfigChange,
    ForkOrigin,
    ManifestData,
    ManifestError,
    RunManifest,
    utc_now,
)


def read_fork_point(point: ForkPoint) -> tuple[ManifestData, int, list[dict[str, Any]], list[dict[str, Any]]]:
    """The parent's manifest, the chosen step, every rank's verified payload at it (rank order) and the
    files of its sharded state (a DCP directory, verified with the main payload; none for replicated state).

    Refuses a step without a checkpoint, naming the steps that have one.
    """
    parent_dir = point.run_dir.resolve()
    parent = RunManifest(parent_dir).read()
    step = fork_step(point)
    store = CheckpointStore(RunManifest(parent_dir), keep_last=len(parent.checkpoints))
    record = next(c for c in parent.checkpoints if c.step == step)
    try:
        payloads = [store.load_step(step, 0, parent.run_uid).payload]
        for part in sorted((p for p in record.parts if not p.get("sharded")), key=lambda p: int(p["rank"])):
            payloads.append(store.load_step(step, int(part["rank"]), parent.run_uid).payload["rank_part"])
    except CheckpointError as error:
        raise ManifestError(f"cannot fork {parent_dir} at step {step}: {error}") from None
    return parent, step, payloads, [p for p in record.parts if p.get("sharded")]


def fork_run(
    point: ForkPoint,
    child_dir: Path,
    name: str,
    config: dict[str, Any],
    wandb: WandbOptions,
    max_requeues: int,
    launch: Mapping[str, Any],
) -> ManifestData:
    """Create the child run at ``child_dir`` from the parent's checkpoint; the parent is only read."""
    parent, step, payloads, sharded = read_fork_point(point)
    parent_dir = point.run_dir.resolve()
    child_dir = child_dir.resolve()
    if child_dir == parent_dir:
        raise ManifestError(f"the fork needs its own directory, not the parent's ({parent_dir})")
    total = int(config["run"].get("steps", parent.total_steps))
    if total <= step:
        raise ManifestError(f"the fork starts at step {step}; pass --steps N with N > {step}")
    changes = config_differences(parent.config, config)
    existed = child_dir.exists()
    data = create_run(child_dir, name, parent.workload, config, wandb, max_requeues, launch)
    try:
        _adopt_checkpoint(child_dir, data, step, payloads, sharded, parent_dir)
        with RunManifest(child_dir).update() as data:
            data.forked_from = ForkOrigin(
                run_dir=str(parent_dir), name=parent.name, run_uid=parent.run_uid,
                wandb_run_id=parent.wandb.run_id, step=step, changes=changes,
            )  # fmt: skip
            data.wandb.last_step = step  # the child's W&B run begins after the fork point
            if changes:
                data.config_changes.append(ConfigChange(at_step=step, time=utc_now(), changes=changes))
    except BaseException:
        if not existed:
            shutil.rmtree(child_dir, ignore_errors=True)
        raise
    return data


def _adopt_checkpoint(
    child_dir: Path,
    child: ManifestData,
    step: int,
    payloads: list[dict[str, Any]],
    sharded: list[dict[str, Any]],
    parent_dir: Path,
) -> None:
    """Write the parent's state as the child's own checkpoint at ``step`` (every rank's part; a sharded
    state's DCP files copied as they are: they name no run), published."""
    store = CheckpointStore(RunManifest(child_dir), keep_last=1)
    for part in sharded:
        target = child_dir / part["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(parent_dir / part["file"], target)
    parts = list(sharded)
    for rank, payload in enumerate(payloads):
        meta = {**payload.get("meta", {}), "run_uid": child.run_uid}
        if rank == 0:
            meta["run_name"] = child.name
        written = store.write_part(step, rank, {**payload, "meta": meta})
        parts.append(written)
    main, others = parts[len(sharded)], parts[: len(sharded)] + parts[len(sharded) + 1 :]
    store.publish(
        CheckpointRecord(
            step=step, file=main["file"], bytes=main["bytes"], sha256=main["sha256"],
            created_at=utc_now(), parts=others,
        )
    )  # fmt: skip
