"""The manifest's side of one process's life: open its segment, close it with its reason, count requeues.

A segment is opened when a process starts training and closed when it stops. A segment still open
when the next process starts belonged to a process that died without closing it (SIGKILL, OOM, node
failure): the next process closes it as ``killed``, at the last moment known to be durable.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trm_cluster.core.job_context import JobContext
from trm_cluster.core.signals import StopRequest
from trm_cluster.rundir.heartbeat import read_beat
from trm_cluster.rundir.lease import LeaseLost, ensure_held, take_over_or_refuse
from trm_cluster.rundir.manifest import ManifestData, ManifestError, RunManifest, Segment, utc_now
from trm_cluster.rundir.segment_timings import SegmentTimings

log = logging.getLogger(__name__)


def open_segment(manifest: RunManifest, context: JobContext, total_steps: int | None = None) -> Segment:
    """Take over a dangling segment's lease (closing it as killed) or refuse (lease.py); open this one."""
    with manifest.update() as data:
        dangling = data.open_segment
        if dangling is not None:
            beat = read_beat(manifest.run_dir, dangling.index)
            notice = take_over_or_refuse(dangling, context, beat.time if beat else None)
            if notice:
                log.warning("%s", notice)
            _close_as_killed(dangling, data, manifest.run_dir)
        if total_steps is not None:
            data.total_steps = total_steps
        segment = Segment(
            index=len(data.segments),
            job_id=context.job_id,
            array_index=context.array_index,
            restart_count=context.restart_count,
            host=context.host,
            pid=context.pid,
            executor=context.executor,
            start_time=utc_now(),
            start_step=data.step,
            timings=SegmentTimings(process_start_time=_iso(context.started_at)),
        )
        data.segments.append(segment)
        data.status = "running"
    return segment


def _close_as_killed(dangling: Segment, data: ManifestData, data_dir: Path | None = None) -> None:
    """A killed segment trained until its last durable checkpoint; what follows is a gap, not training.

    (The next process's start time would count the dead time, hours in a queue on Slurm, as training.)
    """
    durable = [
        c.created_at
        for c in data.checkpoints
        if c.step > dangling.start_step and _at_or_after(c.created_at, dangling.start_time)
    ]
    dangling.end_time = durable[-1] if durable else dangling.start_time
    dangling.end_step = data.step
    dangling.end_reason = "killed"
    dangling.message = "process ended without closing its segment (SIGKILL, OOM, node failure?)"
    beat = read_beat(data_dir, dangling.index) if data_dir is not None else None
    if beat is not None:  # how far it got past the durable step: work the next process does again
        dangling.last_seen_step, dangling.last_seen_time = beat.step, _iso(beat.time)
        dangling.recomputed_steps = max(0, beat.step - data.step)
        dangling.timings.save_s = beat.save_s


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")


def _at_or_after(moment: str, start: str) -> bool:
    try:
        return datetime.fromisoformat(moment) >= datetime.fromisoformat(start)
    except ValueError:
        return False


def close_segment(
    manifest: RunManifest,
    index: int,
    step: int,
    reason: str,
    request: StopRequest | None,
    durable_step: int,
    timings: SegmentTimings | None = None,
) -> bool:
    """Close the segment with its reason; count the requeue; return whether a requeue is allowed.

    Timeouts spend the per-submission budget (``max_requeues``); preemptions never do. ``timings``: the
    segment's record of what its process measured (segment_timings.py), written as it is.
    """
    with manifest.update() as data:
        ensure_held(data, index)
        segment = data.segments[index]
        if timings is not None:
            segment.timings = dataclasses.replace(timings)
        segment.end_time, segment.end_step, segment.end_reason = utc_now(), step, reason
        segment.signal = request.name if request else None
        data.wandb.last_step = max(data.wandb.last_step, durable_step)
        if reason == "completed":
            data.status = "completed"
            return False
        if reason == "cancelled":
            segment.end_reason = "killed"
            segment.message = (
                "cancelled (SIGTERM that was neither a time limit nor a preemption); not requeued"
            )
            data.status = "failed"
            return False
        data.requeues[reason] = data.requeues.get(reason, 0) + 1
        timeouts = data.requeues["timeout"] - data.timeouts_at_submit
        allowed = reason == "preempted" or timeouts <= data.max_requeues
        data.status = "requeued" if allowed else "failed"
        if not allowed:
            segment.message = (
                f"timeout requeue budget spent ({data.max_requeues} requeues since the last submit)"
            )
        return allowed


TRACEBACK_LINES = 12
"""How much of a failure's traceback the manifest keeps: its last lines, where the cause is named."""


def fail_segment(
    manifest: RunManifest, index: int, reason: str, error: BaseException | str, step: int | None = None
) -> None:
    """Close the segment as failed (or killed); the manifest must say so even if this process dies.

    ``step``: the step whose exception this is (a failure inside the loop, which may be retried)."""
    message = error if isinstance(error, str) else traceback_tail(error)
    with manifest.update() as data:
        ensure_held(data, index)
        segment = data.segments[index]
        if segment.end_reason is None:
            segment.end_time, segment.end_step, segment.end_reason = utc_now(), data.step, reason
            segment.message = message[-2000:]
            segment.failed_step = step
        if data.status != "requeued":
            data.status = "failed"


def record_hang_line(manifest: RunManifest, index: int, line: str) -> None:
    """One rank's watchdog line on a hung segment (every rank writes its own; rank 0 also closes it)."""
    with manifest.update() as data:
        data.segments[index].hangs.append(line)


def record_warning(manifest: RunManifest, index: int, warning: str, timings: SegmentTimings) -> None:
    """A warning for ``status`` on the open segment (the grace window), with the timings behind it."""
    with manifest.update() as data:
        ensure_held(data, index)
        data.segments[index].warning = _joined(data.segments[index].warning, warning)
        data.segments[index].timings = dataclasses.replace(timings)


def add_segment_warning(manifest: RunManifest, warning: str) -> None:
    """Another warning for ``status`` on the open segment (kept beside any it holds)."""
    with manifest.update() as data:
        segment = data.open_segment
        if segment is not None:
            ensure_held(data, segment.index)
            segment.warning = _joined(segment.warning, warning)


def _joined(previous: str | None, warning: str) -> str:
    return warning if not previous or previous == warning else f"{previous}\n{warning}"


def record_start_step(manifest: RunManifest, index: int, step: int) -> None:
    """The segment resumed from another step than it opened at: the load fell back past a bad file."""
    with manifest.update() as data:
        ensure_held(data, index)
        data.segments[index].start_step = step


def failure_message(error: BaseException, world_size: int) -> BaseException | str:
    """What the manifest says of a failure: the error, and for a collective's failure in a run of several
    ranks the likely cause (rank 0 sees a dead or stalled rank in its next collective)."""
    if world_size > 1 and isinstance(error, RuntimeError):
        return (
            f"{type(error).__name__}: {error} (rank 0 of {world_size}: a collective failed; "
            "another rank may have died or stalled)"
        )
    return error


def completion_summary(data: ManifestData, step: int, weights_sha256: str | None) -> dict[str, Any]:
    """The job's result once the run completed: where it ended, its W&B run and its last checkpoint."""
    latest = data.checkpoints[-1] if data.checkpoints else None
    return {
        "status": data.status,
        "step": step,
        "run_id": data.wandb.run_id,
        "checkpoint": latest.file if latest else None,
        "weights_sha256": weights_sha256,
    }


def traceback_tail(error: BaseException) -> str:
    lines = "".join(traceback.format_exception(error)).rstrip().splitlines()
    return "\n".join(lines[-TRACEBACK_LINES:])


def record_failed_save(manifest: RunManifest, index: int, step: int, error: BaseException) -> None:
    """Note a checkpoint that could not be written on the open segment (best effort: the disk may be full)."""
    note = f"checkpoint at step {step} not written: {type(error).__name__}: {error}"
    try:
        with manifest.update() as data:
            ensure_held(data, index)
            segment = data.segments[index]
            segment.message = (f"{segment.message}\n{note}" if segment.message else note)[-2000:]
    except LeaseLost:
        raise
    except (OSError, ManifestError) as manifest_error:
        log.error("could not record the failed checkpoint in the manifest either: %s", manifest_error)


def record_wandb_started(manifest: RunManifest, index: int, segment_dir: str | None) -> None:
    with manifest.update() as data:
        ensure_held(data, index)
        data.wandb.started = True
        data.segments[index].wandb_dir = segment_dir
