"""Where a run's wall-clock time went: queue, startup, training, saving, work lost to kills; goodput.

Why: a preemptible run's cost is not its steps/s but how much of the time since it was created went
into useful training. Everything comes from the manifest's segments (old manifests, lacking the newer
fields, give what they can: their startup and saving count as training).

Per segment: *startup* runs from the process's start (or the segment's, without it) to its first step
done; *saving* is the time its checkpoints took; *training* is the rest up to its end (a killed
segment's end is its last durable checkpoint); *lost* is a killed segment's time past that checkpoint
(up to its last heartbeat), whose steps the next segment recomputes. *Queue* is every gap between
segments (and from creation to the first one) not otherwise accounted for. Goodput = training / wall.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from trm_cluster.core.formatting import clock
from trm_cluster.rundir.manifest import ManifestData, Segment

DONE = ("completed", "failed")


@dataclass(frozen=True)
class SegmentTimes:
    index: int
    start: float
    """Seconds since the run's creation (as every moment here)."""
    end: float | None
    startup_s: float
    training_s: float
    saving_s: float
    lost_s: float


@dataclass(frozen=True)
class Goodput:
    wall_s: float
    """From the run's creation to its end (a run still going: to now)."""
    training_s: float
    queue_s: float
    startup_s: float
    saving_s: float
    lost_s: float
    """Training time past a killed segment's last checkpoint: done, and done again."""
    steps_recomputed: int
    unaccounted_s: float
    """A run still going: the time since its newest sign of life (training now, or dead)."""
    goodput: float | None
    segments: tuple[SegmentTimes, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Goodput:
        return cls(**{**raw, "segments": tuple(SegmentTimes(**s) for s in raw.get("segments", ()))})


def _t(moment: str | None) -> float | None:
    return datetime.fromisoformat(moment).timestamp() if moment else None


def segment_times(
    segment: Segment, created: float, open_end: float | None, not_before: float
) -> SegmentTimes:
    """One segment's split; ``open_end`` stands in for the end of a segment still open; its startup
    begins no earlier than ``not_before`` (the previous segment's end: the debug executor runs every
    segment in the one process that created the run)."""
    start = _t(segment.start_time) or created
    end = _t(segment.end_time) if segment.end_time else open_end
    began = min(max(_t(segment.timings.process_start_time) or start, not_before), start)
    first = _t(segment.timings.first_step_time)
    stop = end if end is not None else start
    startup = max(0.0, min(first, stop) - began) if first is not None else max(0.0, stop - began)
    if first is None and segment.end_step is not None and segment.end_step > segment.start_step:
        startup = start - began  # an old manifest: no first-step time, its steps count as training
    saving = min(segment.timings.save_s or 0.0, max(0.0, stop - began - startup))
    training = max(0.0, stop - began - startup - saving)
    lost = 0.0
    if segment.end_reason == "killed" and segment.last_seen_time and end is not None:
        lost = max(0.0, (_t(segment.last_seen_time) or end) - end)
    return SegmentTimes(
        index=segment.index,
        start=began - created,
        end=None if end is None else end - created,
        startup_s=startup,
        training_s=training,
        saving_s=saving,
        lost_s=lost,
    )


def goodput(data: ManifestData, now: float | None = None) -> Goodput:
    """The run's wall-clock split. A segment still open counts up to its newest sign of life (the
    newest checkpoint), never to now: its process may be long dead."""
    created = _t(data.created_at) or 0.0
    current = datetime.now(UTC).timestamp() if now is None else now
    latest_ckpt = _t(data.checkpoints[-1].created_at) if data.checkpoints else None
    times: list[SegmentTimes] = []
    for segment in data.segments:
        open_end = None
        if segment.end_time is None and latest_ckpt is not None:
            open_end = max(latest_ckpt, _t(segment.start_time) or created)
        previous = times[-1] if times else None
        not_before = created + (previous.end or previous.start) + previous.lost_s if previous else created
        times.append(segment_times(segment, created, open_end, not_before))
    finished = data.status in DONE and bool(data.segments) and data.segments[-1].end_time is not None
    end = (_t(data.segments[-1].end_time) or current) if finished else current
    wall = max(end - created, 0.0)
    queue, accounted_until = 0.0, 0.0
    for s in times:  # the gaps between one segment's last known moment and the next one's process start
        queue += max(0.0, s.start - accounted_until)
        accounted_until = max(accounted_until, (s.end if s.end is not None else s.start) + s.lost_s)
    if not finished and not (data.segments and data.segments[-1].end_time is None):
        queue += max(0.0, wall - accounted_until)  # between segments now (or never started): waiting
    busy = sum(s.startup_s + s.training_s + s.saving_s + s.lost_s for s in times)
    training = sum(s.training_s for s in times)
    return Goodput(
        wall_s=wall,
        training_s=training,
        queue_s=queue,
        startup_s=sum(s.startup_s for s in times),
        saving_s=sum(s.saving_s for s in times),
        lost_s=sum(s.lost_s for s in times),
        steps_recomputed=sum(s.recomputed_steps or 0 for s in data.segments),
        unaccounted_s=max(0.0, wall - queue - busy),
        goodput=training / wall if wall > 0 else None,
        segments=tuple(times),
    )


def render(g: Goodput) -> str:
    share = f"{100 * g.goodput:.0f}%" if g.goodput is not None else "-"
    return (
        f"goodput {share}: wall {clock(g.wall_s)} = training {clock(g.training_s)} + queue "
        f"{clock(g.queue_s)} + startup {clock(g.startup_s)} + saving {clock(g.saving_s)} + lost to kills "
        f"{clock(g.lost_s)}; steps recomputed {g.steps_recomputed}"
    )
