"""``status RUN_DIR --plot FILE.png``: a run's life in one picture (matplotlib, headless).

Top panel: the global step against wall-clock minutes since the run was created, one colour per
segment, the gaps between segments (queue, restarts) shaded, a marker where a segment ended other than
by completing (preempted, timeout, killed, failed). Bottom panel: the training loss against the same
clock. The title carries the goodput. For a folder of runs: one line per run on a common clock.

The points come from the W&B offline files of each segment (``_step`` and ``_timestamp`` of every row);
without them, from the segment's ends and the checkpoints. The loss comes from the W&B rows, else from
the newest checkpoint's journal of rows (placed on the clock by the segment that trained each step).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from trm_cluster.ops.goodput import goodput
from trm_cluster.rundir.manifest import ManifestData, RunManifest, Segment
from trm_cluster.wandb.files import read_segment

LOSS_KEYS = ("train/loss", "loss")
END_MARKERS = {"preempted": "v", "timeout": "s", "killed": "X", "failed": "x", "hung": "P"}
"""How each unfinished end is marked (a completed end is not marked)."""


@dataclass
class SegmentTrace:
    """One segment's step-vs-time points (seconds since the run's creation) and its loss rows."""

    segment: Segment
    times: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    loss: list[tuple[float, float]] = field(default_factory=list)
    """(seconds, loss)."""
    startup_end: float | None = None
    """When its first step was done: before it, the process was starting up (drawn dotted)."""


def _t(moment: str | None) -> float | None:
    return datetime.fromisoformat(moment).timestamp() if moment else None


def _wandb_rows(run_dir: Path, segment: Segment) -> list[dict[str, Any]]:
    if not segment.wandb_dir:
        return []
    files = sorted((run_dir / segment.wandb_dir).glob("run-*.wandb"))
    return [row for f in files for row in read_segment(f).history] if files else []


def _loss_of(metrics: dict[str, Any]) -> float | None:
    for key in LOSS_KEYS:
        node: Any = metrics
        for part in key.split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, int | float):
            return float(node)
        if isinstance(metrics.get(key), int | float):
            return float(metrics[key])
    return None


def traces(run_dir: Path, data: ManifestData) -> list[SegmentTrace]:
    """Every segment's points, from its W&B rows where it has them, else from its ends and checkpoints."""
    created = _t(data.created_at) or 0.0
    result = []
    for segment in data.segments:
        trace = SegmentTrace(segment)
        start = (_t(segment.start_time) or created) - created
        end_time = _t(segment.end_time)
        points = [(start, segment.start_step)]
        first = _t(segment.timings.first_step_time)
        if first is not None:
            trace.startup_end = first - created
            points.append((trace.startup_end, segment.start_step))
        for row in _wandb_rows(run_dir, segment):
            stamp, step = row.get("_timestamp"), row.get("_step")
            if isinstance(stamp, int | float) and isinstance(step, int) and step > segment.start_step:
                points.append((float(stamp) - created, step))
                loss = _loss_of(row)
                if loss is not None:
                    trace.loss.append((float(stamp) - created, loss))
        if len(points) == 1:  # no W&B rows: the checkpoints this segment published
            points += [
                (t - created, c.step)
                for c in data.checkpoints
                if (t := _t(c.created_at)) is not None and c.step > segment.start_step
                and (end_time is None or t <= end_time + 1e-3) and t >= start + created
            ]  # fmt: skip
        if end_time is not None and segment.end_step is not None:
            points.append((end_time - created, segment.end_step))
        points.sort(key=lambda p: (p[1], p[0]))  # by step: a row logged a moment before first_step_time
        trace.steps = [p[1] for p in points]
        trace.times = list(itertools.accumulate((p[0] for p in points), max))  # time never runs back
        result.append(trace)
    if not any(t.loss for t in result):
        _loss_from_journal(run_dir, data, result)
    return result


def _loss_from_journal(run_dir: Path, data: ManifestData, result: Sequence[SegmentTrace]) -> None:
    """No W&B rows: the newest checkpoint's journal, each row placed on its segment's step-time line."""
    if not data.checkpoints:
        return
    try:
        payload = torch.load(run_dir / data.checkpoints[-1].file, map_location="cpu", weights_only=True)
    except Exception:
        return
    journal = payload.get("tracking", {}).get("journal", {})
    rows = journal.get("rows", []) if isinstance(journal, dict) else list(journal)
    for row in rows:
        step, loss = int(row["step"]), _loss_of(row.get("metrics", {}))
        trace = next((t for t in result if t.steps and t.steps[0] < step <= t.steps[-1]), None)
        if loss is None or trace is None:
            continue
        trace.loss.append((_interpolate(step, trace.steps, trace.times), loss))


def _interpolate(step: int, steps: Sequence[int], times: Sequence[float]) -> float:
    for (s0, t0), (s1, t1) in itertools.pairwise(zip(steps, times, strict=True)):
        if s0 <= step <= s1:
            return t0 if s1 == s0 else t0 + (t1 - t0) * (step - s0) / (s1 - s0)
    return times[-1]


def run_figure(run_dir: Path) -> Figure:
    """The picture of one run (see the module's docstring)."""
    data = RunManifest(run_dir).read()
    segments = traces(run_dir, data)
    figure = Figure(figsize=(10, 6.5), layout="constrained")
    steps_axis, loss_axis = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    colours = [f"C{i % 10}" for i in range(len(segments))]
    for trace, colour in zip(segments, colours, strict=True):
        minutes = [t / 60 for t in trace.times]
        trained_from = 1 if trace.startup_end is not None else 0  # start -> first step: starting up
        if trained_from:
            steps_axis.plot(minutes[:2], trace.steps[:2], color=colour, linestyle=":", label="starting up")
        steps_axis.plot(
            minutes[trained_from:], trace.steps[trained_from:], color=colour, linewidth=2,
            label=f"segment {trace.segment.index}",
        )  # fmt: skip
        reason = trace.segment.end_reason
        if reason in END_MARKERS and trace.times:
            steps_axis.plot(minutes[-1], trace.steps[-1], linestyle="none", marker=END_MARKERS[reason],
                            markersize=10, color="black", label=reason)  # fmt: skip
        if trace.loss:
            loss_axis.plot([t / 60 for t, _ in trace.loss], [v for _, v in trace.loss], color=colour,
                           marker=".", label=f"loss, segment {trace.segment.index}")  # fmt: skip
    for before, after in itertools.pairwise(segments):
        if before.times and after.times and after.times[0] >= before.times[-1]:
            steps_axis.axvspan(
                before.times[-1] / 60, after.times[0] / 60, color="0.85", label="between segments"
            )
    _dedupe_legend(steps_axis)
    steps_axis.set_ylabel("global step")
    steps_axis.grid(alpha=0.3)
    loss_axis.set_ylabel("training loss")
    loss_axis.set_xlabel("minutes since the run was created")
    loss_axis.grid(alpha=0.3)
    if loss_axis.lines:
        loss_axis.set_yscale(
            "log" if min(min(line.get_ydata()) for line in loss_axis.lines) > 0 else "linear"
        )
    else:
        loss_axis.text(
            0.5, 0.5, "no loss rows (no W&B files or journal)", ha="center", transform=loss_axis.transAxes
        )
    g = goodput(data)
    share = f"{100 * g.goodput:.0f}%" if g.goodput is not None else "-"
    figure.suptitle(
        f"{data.name}: {data.status} at step {data.step}/{data.total_steps}, {len(data.segments)} segments, "
        f"goodput {share}"
    )
    return figure


def folder_figure(run_dirs: Iterable[Path]) -> Figure:
    """One line per run (its segments joined, gaps left open) on a common clock."""
    runs = [(d, RunManifest(d).read()) for d in run_dirs]
    origin = min((_t(data.created_at) or 0.0 for _, data in runs), default=0.0)
    figure = Figure(figsize=(10, 5), layout="constrained")
    axis = figure.subplots()
    for index, (run_dir, data) in enumerate(runs):
        offset = (_t(data.created_at) or origin) - origin
        xs: list[float] = []
        ys: list[float] = []
        for trace in traces(run_dir, data):
            xs += [(offset + t) / 60 for t in trace.times] + [float("nan")]
            ys += [float(s) for s in trace.steps] + [float("nan")]
        share = goodput(data).goodput
        label = f"{data.name} ({data.status}, goodput {100 * share:.0f}%)" if share is not None else data.name
        axis.plot(xs, ys, color=f"C{index % 10}", linewidth=2, label=label)
    axis.set_xlabel("minutes since the first run was created")
    axis.set_ylabel("global step")
    axis.grid(alpha=0.3)
    if runs:
        axis.legend(loc="upper left", fontsize="small")
    figure.suptitle(f"{len(runs)} runs")
    return figure


def _dedupe_legend(axis: Any) -> None:
    handles, labels = axis.get_legend_handles_labels()
    unique: dict[str, Any] = {}
    for label, handle in zip(labels, handles, strict=True):
        unique.setdefault(label, handle)
    axis.legend(unique.values(), unique.keys(), loc="upper left", fontsize="small")


def save(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
