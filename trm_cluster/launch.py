"""Creating or resuming a run directory and submitting its job: the programmatic side of ``submit``.

All checks run before anything is written: a refused request leaves the disk as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from .config import RunConfig
from .executors import ExecutorOptions, make_executor
from .job import TrainingJob
from .manifest import ConfigChange, ManifestData, ManifestError, RunManifest, WandbInfo, config_hash, utc_now
from .tracking import new_run_id, resolve_mode

LOG_DIR = "logs"


@dataclass(frozen=True)
class WandbOptions:
    project: str = "peptide-trm"
    entity: str | None = None
    mode: str = "auto"
    """auto (online when an API key is configured, else offline), online, offline, disabled."""


@dataclass(frozen=True)
class Submission:
    job: submitit.Job[Any]
    run_dir: Path
    run_id: str
    kind: str


def resolved_config(run: RunConfig, job: Any) -> dict[str, Any]:
    return {"run": dataclasses.asdict(run), "job": dataclasses.asdict(job)}


def create_run(
    run_dir: Path,
    name: str,
    workload: str,
    config: dict[str, Any],
    wandb: WandbOptions,
    max_requeues: int,
    launch: Mapping[str, Any],
) -> ManifestData:
    """Write the manifest of a new run, with its W&B run id chosen once, here, before any wandb.init."""
    if run_dir.exists() and any(run_dir.iterdir()):
        hint = (
            f"use --resume {run_dir}" if (run_dir / "manifest.json").exists() else "choose another --run-dir"
        )
        raise ManifestError(f"{run_dir} already exists and is not empty; {hint}")
    data = ManifestData(
        name=name,
        run_uid=secrets.token_hex(8),
        workload=workload,
        config=config,
        config_hash=config_hash(config),
        total_steps=int(config["run"]["steps"]),
        wandb=WandbInfo(
            project=wandb.project, entity=wandb.entity, run_id=new_run_id(), mode=resolve_mode(wandb.mode)
        ),
        max_requeues=max_requeues,
        launch=dict(launch),
    )
    RunManifest(run_dir).create(data)
    return data


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Dotted key -> [old, new] for every leaf that differs."""
    changes: dict[str, list[Any]] = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes.update({f"{key}.{k}": v for k, v in config_differences(a, b).items()})
        elif _jsonable(a) != _jsonable(b):
            changes[key] = [a, b]
    return changes


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def resume_run(run_dir: Path, config: dict[str, Any], launch: Mapping[str, Any]) -> ManifestData:
    """Prepare an existing run for another submission, recording any explicit config change."""
    manifest = RunManifest(run_dir)
    current = manifest.read()
    _refuse_if_active(current)
    new_steps = int(config["run"]["steps"])
    if current.step >= new_steps:
        raise ManifestError(
            f"run is already at step {current.step} of {new_steps}; pass --steps N with N > {current.step} "
            "to train it further"
        )
    with manifest.update() as data:
        changes = config_differences(data.config, config)
        if changes:
            data.config_changes.append(ConfigChange(at_step=data.step, time=utc_now(), changes=changes))
            data.config = config
        data.total_steps = new_steps
        data.status = "requeued"
        data.launch = dict(launch)
        data.max_requeues = int(launch.get("max_requeues", data.max_requeues))
        data.timeouts_at_submit = data.requeues.get("timeout", 0)  # a fresh budget per submission
    return data


def _refuse_if_active(data: ManifestData) -> None:
    if data.status not in ("running", "requeued"):
        return
    last = data.segments[-1] if data.segments else None
    job_id = last.job_id if last else data.launch.get("job_id")
    if job_id and _job_alive(str(job_id), data.launch.get("executor", ""), last.host if last else None):
        raise ManifestError(
            f"run is still active (job {job_id}, status {data.status}); wait for it or cancel it before --resume"
        )


def _job_alive(job_id: str, executor: str, host: str | None) -> bool:
    if executor == "slurm":
        import subprocess

        try:
            out = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return False
        return out.returncode == 0 and bool(out.stdout.strip())
    if executor == "local" and job_id.isdigit() and host in (None, os.uname().nodename):
        try:
            os.kill(int(job_id), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return False


def preemption_steps(count: int, total_steps: int, seed: str) -> tuple[int, ...]:
    """``count`` random steps for a preemption rehearsal, two apart and at least two before the end.

    Why the spacing: a rehearsal signal lands up to one step late, and the next process must still find
    its own step ahead of it (and the last one a step left before the end), so all ``count`` happen.
    """
    if count <= 0:
        return ()
    if total_steps < 2 * count + 1:
        raise ValueError(f"--preemptions {count} needs a run of at least {2 * count + 1} steps")
    base = sorted(random.Random(seed).sample(range(1, total_steps - count), count))
    return tuple(b + i for i, b in enumerate(base))


def submit(
    run_dir: Path,
    kind: str,
    options: ExecutorOptions,
    wandb_resume: str = "allow",
    preempt_at: tuple[int, ...] = (),
) -> Submission:
    run_dir = run_dir.resolve()
    executor = make_executor(kind, options, run_dir / LOG_DIR)
    job = executor.submit(TrainingJob(run_dir, wandb_resume=wandb_resume, preempt_at=preempt_at))
    manifest = RunManifest(run_dir)
    with manifest.update() as data:
        data.launch = {**data.launch, "job_id": str(job.job_id), "submitted_at": utc_now()}
    return Submission(job=job, run_dir=run_dir, run_id=manifest.read().wandb.run_id, kind=kind)


def follow(submission: Submission, poll_s: float = 1.0) -> Iterator[str]:
    """Yield the job's progress lines until the job ends; the caller reads the manifest for the verdict."""
    stdout = submission.job.paths.stdout
    position = 0
    while True:
        done = submission.job.done()
        if stdout.exists():
            with stdout.open("r", errors="replace") as handle:
                handle.seek(position)
                chunk = handle.read()
                position = handle.tell()
            for line in chunk.splitlines():
                if line.startswith(("[trm_cluster]", "Resuming W&B run", "Starting new W&B run")):
                    yield line
        if done:
            return
        time.sleep(poll_s)
