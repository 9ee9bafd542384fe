"""Where a run stands, from its manifest, checkpoints and the queue: the report behind ``status RUN_DIR``
(a dict for ``--json``, and its rendering)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from trm_cluster.ops.goodput import Goodput, goodput
from trm_cluster.ops.goodput import render as render_goodput
from trm_cluster.ops.stall import Liveness, liveness
from trm_cluster.rundir.manifest import ManifestData, RunManifest
from trm_cluster.scheduler.queue_state import QueueState, queue_state, run_job_id


def run_status(run_dir: Path) -> dict[str, Any]:
    data = RunManifest(run_dir).read()
    alive = liveness(run_dir, data)
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
        "weights_sha256": _final_weights_digest(run_dir, data),
        "forked_from": vars(data.forked_from) if data.forked_from else None,
        "goodput": goodput(data).as_dict(),
        "last_step_age_s": None if alive.last_step_age_s is None else round(alive.last_step_age_s, 1),
        "step_s": alive.step_s,
        "stalled": alive.stalled,
        **_queue(data),
    }


def _queue(data: ManifestData) -> dict[str, Any]:
    """A Slurm run's live job state (scheduler/queue_state.py); nothing asked of Slurm for other executors."""
    job_id = run_job_id(data.launch, data.segments)
    if data.launch.get("executor") != "slurm" or job_id is None:
        return {"queue": None, "queue_error": None}
    state, why = queue_state(job_id)
    return {"queue": state.as_dict() if state else None, "queue_error": why}


def _final_weights_digest(run_dir: Path, data: ManifestData) -> str | None:
    """The final checkpoint's weights digest, as recorded when it was saved. A run still training has none
    (its checkpoint is not read: it may hold gigabytes); one completed before the digest was recorded
    gets it from its file, as every run once did."""
    if not data.checkpoints:
        return None
    final = data.checkpoints[-1]
    if final.weights_sha256 is not None or data.status != "completed":
        return final.weights_sha256
    import torch  # only an older completed run pays for it: `status` of any other run never imports torch

    from trm_cluster.core.digest import weights_sha256  # torch too

    if any(part.get("sharded") for part in final.parts):
        return None  # the weights are shards in the step's DCP directory: each file's digest is listed
    path = run_dir / final.file
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
        lines.extend(f"       hung on {line}" for line in s.get("hangs", []))
        if s["end_reason"] is None and status.get("last_step_age_s") is not None:
            alive = Liveness(status["last_step_age_s"], status.get("step_s"), bool(status.get("stalled")))
            lines.append(f"       {alive.describe()}")
    lines.append("checkpoints:")
    for c in status["checkpoints"]:
        size = c["bytes"] + sum(part["bytes"] for part in c.get("parts", []))
        shards = [part for part in c.get("parts", []) if part.get("sharded")]
        sharded = f"  sharded: {Path(shards[0]['file']).parent.name}, {len(shards)} files" if shards else ""
        lines.append(
            f"  step {c['step']:<8} {c['file']}  {size / 1e6:.1f} MB  sha256 {c['sha256'][:12]}{sharded}"
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
