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

from . import overview
from .digest import weights_sha256
from .manifest import MANIFEST_NAME, ManifestData, ManifestError, RunManifest


@dataclass
class StatusArgs:
    """Show a run's progress, segments and checkpoints; given a folder of runs, one line per run."""

    run_dir: tyro.conf.Positional[Path]
    """A run directory, or a folder whose subdirectories are runs (e.g. runs/)."""
    json: bool = False
    """Print machine-readable JSON instead of the summary."""


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
        "segments": [vars(s) for s in data.segments],
        "checkpoints": [vars(c) for c in data.checkpoints],
        "config_changes": [vars(c) for c in data.config_changes],
        "weights_sha256": _latest_weights_digest(run_dir, data),
    }


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
    return "\n".join(lines)


def _duration(segment: dict[str, Any]) -> str:
    if not segment["end_time"]:
        return ""
    seconds = (
        datetime.fromisoformat(segment["end_time"]) - datetime.fromisoformat(segment["start_time"])
    ).total_seconds()
    return f"{seconds:.0f}s" if seconds < 3600 else f"{seconds / 3600:.1f}h"


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(StatusArgs, args=argv, prog="python -m trm_cluster.status")
    if not (args.run_dir / MANIFEST_NAME).exists() and overview.find_runs(args.run_dir):
        return _folder_status(args.run_dir, as_json=args.json)
    try:
        status = run_status(args.run_dir)
    except ManifestError as error:
        print(f"trm-status: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0


def _folder_status(folder: Path, as_json: bool) -> int:
    summaries = overview.overview(folder)
    print(json.dumps(overview.as_json(summaries), indent=2) if as_json else overview.render(summaries))
    broken = [s for s in summaries if s.error]
    if broken:
        print(f"trm-status: error: {len(broken)} of {len(summaries)} runs unreadable", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
