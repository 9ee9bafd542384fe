"""One record of what a process measured of its own segment, read by goodput (ops/goodput.py: startup,
saving) and by the grace-window check (runtime/grace.py: a step, a save, the W&B finish).

Why one record: both used to keep their own copies of the same moments (a first step, a save's
time) in two places of the segment; one record cannot disagree with itself. The session fills it; it
reaches the manifest at the first step (so a SIGKILLed process still leaves its startup behind), with
a grace warning, and when the segment closes. A killed segment's ``save_s`` comes from its heartbeat.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

OLD_TOP_LEVEL = ("process_start_time", "first_step_time", "save_s", "stop_save_s")
"""The fields manifests kept on the segment itself before this record (schema version 1, read as is)."""


@dataclass
class SegmentTimings:
    """Moments as UTC ISO strings, durations in seconds; None: not measured (yet, or by an old version)."""

    process_start_time: str | None = None
    """When the process began (before imports): startup runs from here to the first step."""
    first_step_time: str | None = None
    """When the segment's first step was done."""
    imports_s: float | None = None
    """Process start to the session's start (interpreter, imports, building the trainer before it)."""
    manifest_s: float | None = None
    """Reading the manifest, opening the segment, setting up the ranks."""
    load_s: float | None = None
    """Finding, verifying and loading the newest valid checkpoint."""
    wandb_init_s: float | None = None
    """Starting (or resuming) the W&B run, past the load."""
    first_step_s: float | None = None
    """Process start to the first step's start."""
    step_s: float | None = None
    """The mean step time up to the first save."""
    sync_save_s: float | None = None
    """One save's write (the first synchronous one, else the first background write): the stop's save."""
    save_s: float | None = None
    """All the time the training thread spent saving in this segment (a killed one: to its heartbeat)."""
    stop_save_s: float | None = None
    """The save made when the segment stopped (time limit, preemption, completion)."""
    finish_s: float | None = None
    """The W&B finish when the segment stopped."""
    background_saves: int | None = None
    """Periodic saves written in the background (state/background_save.py), counted when the segment
    closed."""
    save_waits: int | None = None
    """Save requests that found the previous background save still in flight and waited for it."""

    def measured(self) -> dict[str, Any]:
        """The fields that hold a value."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def timings_from_segment(raw: dict[str, Any]) -> dict[str, Any]:
    """A segment's dict as written to disk, with its timings as a :class:`SegmentTimings`; an older
    manifest's (the four :data:`OLD_TOP_LEVEL` fields on the segment, a ``timings`` dict of seconds) is
    folded into the record. A wrong type is left for the schema check to name."""
    if not isinstance(raw, dict):
        raise TypeError(f"a segment must be an object, not {type(raw).__name__}")
    segment = dict(raw)
    old = {key: segment.pop(key) for key in OLD_TOP_LEVEL if key in segment}
    timings = segment.get("timings", {})
    if isinstance(timings, dict):
        segment["timings"] = SegmentTimings(**{**old, **timings})
    return segment
