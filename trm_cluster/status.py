"""``python -m trm_cluster.status RUN_DIR``: where a run stands, from its manifest and checkpoints."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import tyro

from . import overview, sweep
from .digest import weights_sha256
from .goodput import Goodput, goodput
from .goodput import render as render_goodput
from .manifest import MANIFEST_NAME, ManifestData, ManifestError, RunManifest
from .pipes import quiet_on_broken_pipe
from .queue_state import QueueState, queue_state, run_job_id


@dataclass
class StatusArgs:
    """Show a run's progress, segments and checkpoints; given a folder of runs, one line per run."""

    run_dir: tyro.conf.Positional[Path]
    """A run directory, or a folder whose subdirectories are runs (e.g. runs/)."""
    json: bool = False
    """Print machine-readable JSON instead of the summary."""
    plot: Path | None = None
    """Also draw the run's life (steps vs wall-clock per segment, queue gaps, ends, loss) into this
    image file (.png, .svg, .pdf); for a folder of runs, one line per run."""


def run_status(run_dir: Path) -> dict[str, Any]:
    data = RunManifest(run_dir).read()
    return {
        "name": data.name,
        "run_id": data.wandb.run_id,
        "wandb": {"project": data.wandb.project, "entity": data.wandb.entity, "mode": data.wandb.mode},
        "status": data.status,
        "step": data.step,
        "total_steps": data.total_steps,
        "requeues": data.requeues,
        "segments": data.to_dict()["segments"],
        "checkpoints": [vars(c) for c in data.checkpoints],
        "config_changes": [vars(c) for c in data.config_changes],
        "weights_sha256": _latest_weights_digest(run_dir, data),
        "forked_from": vars(data.forked_from) if data.forked_from else None,
        "goodput": goodput(data).as_dict(),
        **_queue(data),
    }


def _queue(data: ManifestData) -> dict[str, Any]:
    """A Slurm run's live job state (queue_state.py); nothing asked of Slurm for other executors."""
    job_id = run_job_id(data.launch, data.segments)
    if data.launch.get("executor") != "slurm" or job_id is None:
        return {"queue": None, "queue_error": None}
    state, why = queue_state(job_id)
    return {"queue": state.as_dict() if state else None, "queue_error": why}


def _latest_weights_digest(run_dir: Path, data: ManifestData) -> str | None:
    if not data.checkpoints:
        return None
    path = run_dir / data.checkpoints[-1].file
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return weights_sha256(payload["model"])


def render(status: dict[str, Any]) -> str:
    lines = [
        f"run {status['name']}  W&B {status['run_id']} ({status['wandb']['mode']})",
        f"status {status['status']}  step {status['step']}/{status['total_steps']}  "
        f"requeues: {status['requeues'].get('timeout', 0)} timeout, {status['requeues'].get('preempted', 0)} preempted",
        "segments:",
    ]
    for s in status["segments"]:
        lines.append(
            f"  #{s['index']:<3} job {s['job_id']:<10} {s['executor']:<6} steps {s['start_step']}->"
            f"{s['end_step'] if s['end_step'] is not None else '?'}  {_duration(s):>8}  "
            f"{s['end_reason'] or 'running'}{' (' + s['signal'] + ')' if s['signal'] else ''}"
        )
        if s.get("warning"):
            lines.append(f"       warning: {s['warning']}")
    lines.append("checkpoints:")
    for c in status["checkpoints"]:
        lines.append(
            f"  step {c['step']:<8} {c['file']}  {c['bytes'] / 1e6:.1f} MB  sha256 {c['sha256'][:12]}"
        )
    for change in status["config_changes"]:
        for key, (old, new) in change["changes"].items():
            lines.append(f"config change at step {change['at_step']}: {key}: {old!r} -> {new!r}")
    if status["weights_sha256"]:
        lines.append(f"weights sha256 {status['weights_sha256']}")
    if status.get("forked_from"):
        origin = status["forked_from"]
        lines.append(f"forked from {origin['name']} (W&B {origin['wandb_run_id']}) at step {origin['step']}")
    lines.append(render_goodput(Goodput.from_dict(status["goodput"])))
    if status.get("queue"):
        lines.append(QueueState(**status["queue"]).render())
    elif status.get("queue_error"):
        lines.append(f"slurm: no answer ({status['queue_error']})")
    return "\n".join(lines)


def _duration(segment: dict[str, Any]) -> str:
    if not segment["end_time"]:
        return ""
    seconds = (
        datetime.fromisoformat(segment["end_time"]) - datetime.fromisoformat(segment["start_time"])
    ).total_seconds()
    return f"{seconds:.0f}s" if seconds < 3600 else f"{seconds / 3600:.1f}h"


@quiet_on_broken_pipe
def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(StatusArgs, args=argv, prog="python -m trm_cluster.status")
    folder = not (args.run_dir / MANIFEST_NAME).exists() and bool(overview.find_runs(args.run_dir))
    if args.plot is not None and args.plot.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        print(f"trm-status: error: --plot {args.plot}: use a .png, .svg or .pdf file", file=sys.stderr)
        return 2
    if folder:
        code = _folder_status(args.run_dir, as_json=args.json)
        if args.plot is not None:
            _draw(args.plot, args.run_dir, folder=True)
        return code
    try:
        status = run_status(args.run_dir)
    except ManifestError as error:
        print(f"trm-status: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2) if args.json else render(status))
    if args.plot is not None:
        _draw(args.plot, args.run_dir, folder=False)
    return 0


PLOT_FORMATS = ("png", "svg", "pdf")


def _draw(path: Path, run_dir: Path, folder: bool) -> None:
    from . import plot  # matplotlib only when a picture is asked for

    runs = [d for d in overview.find_runs(run_dir) if not overview.summarize(d).error] if folder else []
    plot.save(plot.folder_figure(runs) if folder else plot.run_figure(run_dir), path)
    print(f"picture: {path}", file=sys.stderr)  # stderr: --json keeps stdout pure JSON


def _folder_status(folder: Path, as_json: bool) -> int:
    summaries = overview.overview(folder)
    title = None if as_json else sweep.header(folder)  # a sweep folder: its keys and array job first
    if title:
        print(title)
    print(
        json.dumps(overview.as_json(summaries), indent=2) if as_json else overview.render(summaries, folder)
    )
    broken = [s for s in summaries if s.error]
    if broken:
        print(f"trm-status: error: {len(broken)} of {len(summaries)} runs unreadable", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
