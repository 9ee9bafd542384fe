"""Opening a process's segment of a run: its settings, its ranks, the segment itself, and the parts that
serve it (checkpoint store, save path, goodput clock, grace check, step log).

Why its own module: the session (session.py) is the path of a segment from its first step to its
requeue; what exists before the first step is set up here, in two stages, because they fail differently:
:func:`join_run` may be refused (another live holder, a bad setting) and then leaves no trace in the
manifest, while a failure in :func:`segment_parts` happens with a segment open, which the session
records as failed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trm_cluster.core.config import RunConfig
from trm_cluster.core.distributed import Ranks
from trm_cluster.core.errors import UsageError
from trm_cluster.core.rng import use_deterministic_kernels
from trm_cluster.core.workload import dataclass_from_dict
from trm_cluster.rundir.checkpoints import CheckpointStore
from trm_cluster.rundir.manifest import ManifestData, ManifestError, RunManifest, Segment
from trm_cluster.rundir.script_config import ScriptRecord, record_script
from trm_cluster.rundir.segment_clock import SegmentClock
from trm_cluster.rundir.segment_timings import SegmentTimings
from trm_cluster.rundir.segments import open_segment
from trm_cluster.runtime.grace import GraceCheck
from trm_cluster.runtime.plan import SessionPlan
from trm_cluster.runtime.step_log import StepLog
from trm_cluster.state.saves import SavePath


@dataclass
class JoinedRun:
    """This process's place in the run once its segment is open."""

    before: ManifestData
    """The manifest as the previous process left it (its open segment, if it was killed)."""
    config: RunConfig
    ranks: Ranks


@dataclass
class SegmentParts:
    """What serves the open segment: the manifest's view of it and the objects that save, time and log."""

    data: ManifestData
    segment: Segment
    timings: SegmentTimings
    store: CheckpointStore
    clock: SegmentClock
    saves: SavePath
    grace: GraceCheck
    log: StepLog


def resolve_config(defaults: Mapping[str, Any], data: ManifestData) -> RunConfig:
    """The run's settings: RunConfig defaults < the loop's ``session(...)`` values < submit's flags."""
    try:
        config = dataclass_from_dict(RunConfig, {**defaults, **data.config.get("run", {})})
    except (TypeError, ValueError) as error:
        raise UsageError(f"trm_cluster.session(...): {error}") from None
    config.validate()
    return config


def join_run(manifest: RunManifest, plan: SessionPlan, defaults: Mapping[str, Any]) -> JoinedRun:
    """Resolve the settings, join the ranks' process group, and open the segment (rank 0) or be refused."""
    before = manifest.read()
    config = resolve_config(defaults, before)
    if config.deterministic:
        use_deterministic_kernels()  # before CUDA starts (the process group may start it)
    context = plan.context
    ranks = Ranks.setup(context.global_rank, context.world_size, context.local_rank)
    _open_on_rank_zero(manifest, plan, config, ranks)
    return JoinedRun(before, config, ranks)


def _open_on_rank_zero(manifest: RunManifest, plan: SessionPlan, config: RunConfig, ranks: Ranks) -> None:
    """Rank 0 opens the segment (or is refused); every rank learns which, so none waits forever."""
    refusal: BaseException | None = None
    if ranks.is_main:
        try:
            open_segment(manifest, plan.context, config.steps)
        except BaseException as error:
            refusal = error
    message = ranks.broadcast(None if refusal is None else str(refusal))
    if refusal is not None:
        raise refusal
    if message is not None:
        raise ManifestError(f"rank 0 could not open the segment: {message}")


def segment_parts(
    manifest: RunManifest, plan: SessionPlan, joined: JoinedRun, entered: float, script: ScriptRecord
) -> SegmentParts:
    """The open segment's parts; ``entered``: when the session began (``time.time()``); ``script``: the
    script's own config and tags, kept in the manifest (rank 0) before W&B starts from it."""
    config, ranks, context = joined.config, joined.ranks, plan.context
    if ranks.is_main:
        record_script(manifest, script)
    data = manifest.read()
    segment = data.segments[-1]
    timings = segment.timings  # as opened: the process's start time
    timings.imports_s = max(entered - context.started_at, 0.0)  # process start to the session
    store = CheckpointStore(manifest, config.keep_checkpoints, holder=segment.index)
    clock = SegmentClock(manifest, segment.index, ranks.is_main, timings)
    saves = SavePath(ranks, store, manifest, segment.index, clock)
    delay = data.launch.get("signal_delay_s")
    grace_here = ranks.is_main and context.executor in ("slurm", "local")
    grace = GraceCheck(timings, None if delay is None else float(delay), grace_here)
    if ranks.is_main:
        store.remove_orphans()
    log = StepLog(config.log_reduce, config.log_every, config.wandb_step, data.total_steps, plan.quiet)
    timings.manifest_s = time.time() - entered
    return SegmentParts(data, segment, timings, store, clock, saves, grace, log)
