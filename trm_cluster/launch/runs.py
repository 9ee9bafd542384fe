"""Creating or resuming a run directory and submitting its job: the programmatic side of ``submit``.

All checks run before anything is written: a refused request leaves the disk as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from trm_cluster.core.config import RunConfig
from trm_cluster.core.job_context import pid_exists
from trm_cluster.core.workload import is_script_workload
from trm_cluster.rundir.manifest import (
    ConfigChange,
    ManifestData,
    ManifestError,
    RunManifest,
    utc_now,
)
from trm_cluster.scheduler.executors import ExecutorOptions, make_executor
from trm_cluster.scheduler.job import TrainingJob
from trm_cluster.scheduler.script_job import ScriptJob

LOG_DIR = "logs"


@dataclass(frozen=True)
class Submission:
    job: submitit.Job[Any]
    run_dir: Path
    run_id: str
    kind: str


def resolved_config(run: RunConfig, job: Any) -> dict[str, Any]:
    return {"run": dataclasses.asdict(run), "job": dataclasses.asdict(job)}


def resumed_script_config(
    current: Mapping[str, Any], run_flags: Mapping[str, Any], script_args: list[str] | None
) -> dict[str, Any]:
    """A script run's config on ``--resume``: new explicit flags over the old ones; new script args
    (``--script-args ...``, even none) replace the old ones, else they are kept."""
    script = dict(current["script"])
    if script_args is not None:
        script["args"] = list(script_args)
    return {**current, "run": {**current["run"], **run_flags}, "script": script}


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


def resume_run(
    run_dir: Path,
    config: dict[str, Any],
    launch: Mapping[str, Any],
    wandb_changes: Mapping[str, Any] | None = None,
) -> ManifestData:
    """Prepare an existing run for another submission, recording any explicit config change."""
    manifest = RunManifest(run_dir)
    current = manifest.read()
    refuse_resume(current, launch)
    new_steps = int(config["run"].get("steps", current.total_steps))
    unchanged = not config_differences(current.config, config)
    if current.status == "completed" and current.step >= new_steps and unchanged:
        raise ManifestError(
            f"run is already completed at step {current.step} of {new_steps}; pass --steps N with "
            f"N > {current.step} to train it further"
        )
    with manifest.update() as data:
        changes = config_differences(data.config, config)
        if changes:
            data.config_changes.append(ConfigChange(at_step=data.step, time=utc_now(), changes=changes))
            data.config = config
        data.total_steps = new_steps
        for key, value in (wandb_changes or {}).items():  # --wandb-group etc. given again: kept from now on
            setattr(data.wandb, key, list(value) if key == "tags" else value)
        # A run whose last process died after its final checkpoint (status still "running") is
        # finished by the next one: segment closed, W&B journal replayed, the code after the loop run.
        data.status = "requeued"
        data.launch = dict(launch)
        data.max_requeues = int(launch.get("max_requeues", data.max_requeues))
        data.timeouts_at_submit = data.requeues.get("timeout", 0)  # a fresh budget per submission
    return data


def refuse_resume(data: ManifestData, launch: Mapping[str, Any]) -> None:
    """Refuse (ManifestError) a resume of a run that is still active, or with another number of ranks than
    its latest checkpoint's (unless allowed): checked before anything is written."""
    _refuse_if_active(data)
    _refuse_world_size_change(data, launch)


def _refuse_world_size_change(data: ManifestData, launch: Mapping[str, Any]) -> None:
    """The latest checkpoint's ranks (``CheckpointRecord.world_size``); another number resumes only when allowed."""
    if not data.checkpoints or launch.get("allow_world_size_change"):
        return
    saved = data.checkpoints[-1].world_size
    tasks = int(launch.get("tasks_per_node") or launch.get("gpus_per_node") or 1)
    now = int(launch.get("nodes", 1)) * tasks
    if saved != now:
        raise ManifestError(
            f"the latest checkpoint (step {data.step}) was written by {saved} ranks and this submission has "
            f"{now}: a resume is exact only with {saved}; pass --allow-world-size-change to continue anyway"
        )


def _refuse_if_active(data: ManifestData) -> None:
    if data.status not in ("running", "requeued"):
        return
    last = data.segments[-1] if data.segments else None
    job_id = last.job_id if last else data.launch.get("job_id")
    executor = data.launch.get("executor", "")
    if job_id and _job_alive(str(job_id), executor, last.host if last else None):
        cancel = f"scancel {job_id}" if executor == "slurm" else f"kill {job_id} (its local controller)"
        raise ManifestError(
            f"run is still active (job {job_id}, status {data.status}): a --resume now would train it twice; "
            f"wait for the job to end, or cancel it first with: {cancel}"
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
        return pid_exists(int(job_id))
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
    job_type = ScriptJob if is_script_workload(RunManifest(run_dir).read().workload) else TrainingJob
    job = executor.submit(job_type(run_dir, wandb_resume=wandb_resume, preempt_at=preempt_at))
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
