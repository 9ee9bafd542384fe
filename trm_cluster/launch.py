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
from .environment import pid_exists
from .executors import ExecutorOptions, make_executor
from .job import TrainingJob
from .manifest import ConfigChange, ManifestData, ManifestError, RunManifest, WandbInfo, config_hash, utc_now
from .tracking import new_run_id, resolve_mode

LOG_DIR = "logs"


@dataclass(frozen=True)
class WandbOptions:
    """What ``wandb.init`` gets besides the id; chosen when the run is created, kept for every process."""

    project: str = "peptide-trm"
    entity: str | None = None
    mode: str = "auto"
    """auto (online when an API key is configured, else offline), online, offline, disabled."""
    group: str | None = None
    tags: tuple[str, ...] = ()
    job_type: str | None = None
    notes: str | None = None

    @classmethod
    def resolve(
        cls,
        default_project: str,
        mode: str = "auto",
        project: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        tags: tuple[str, ...] | None = None,
        job_type: str | None = None,
        notes: str | None = None,
    ) -> WandbOptions:
        """Flags first, then the WANDB_* variables W&B itself honours, read here once (a requeued process
        on a compute node may not see the submitting shell's environment)."""
        env = os.environ
        env_tags = tuple(t for t in env.get("WANDB_TAGS", "").split(",") if t.strip())
        return cls(
            project=project or env.get("WANDB_PROJECT") or default_project,
            entity=entity or env.get("WANDB_ENTITY") or None,
            mode=mode,
            group=group or env.get("WANDB_RUN_GROUP") or None,
            tags=tuple(tags) if tags is not None else tuple(t.strip() for t in env_tags),
            job_type=job_type or env.get("WANDB_JOB_TYPE") or None,
            notes=notes or env.get("WANDB_NOTES") or None,
        )


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
        total_steps=int(config["run"].get("steps", 0)),
        wandb=WandbInfo(
            project=wandb.project,
            entity=wandb.entity,
            run_id=new_run_id(),
            mode=resolve_mode(wandb.mode),
            group=wandb.group,
            tags=list(wandb.tags),
            job_type=wandb.job_type,
            notes=wandb.notes,
        ),
        max_requeues=max_requeues,
        launch=dict(launch),
    )
    RunManifest(run_dir).create(data)
    return data


def create_script_run(
    run_dir: Path,
    script: Path | None,
    script_args: list[str],
    run_flags: Mapping[str, Any],
    entry: str | None = None,
    name: str | None = None,
    wandb: WandbOptions | None = None,
    max_requeues: int = 20,
    launch: Mapping[str, Any] | None = None,
) -> ManifestData:
    """A run of a user's own script: ``config["run"]`` holds only the flags given explicitly (they win
    over what the script passes to ``session()``), ``config["script"]`` what to run and its arguments."""
    from .script_job import SCRIPT_WORKLOAD, script_config

    record = script_config(script, entry, script_args)
    stem = Path(record["path"]).stem if record["path"] else str(entry).partition(":")[0].rsplit(".", 1)[-1]
    wandb = wandb or WandbOptions.resolve(default_project=stem)
    config = {"run": dict(run_flags), "job": {}, "script": record}
    return create_run(
        run_dir,
        name or run_dir.name,
        SCRIPT_WORKLOAD,
        config,
        wandb,
        max_requeues,
        {"cwd": os.getcwd(), **(launch or {})},
    )


def is_script_run(run_dir: Path) -> bool:
    from .script_job import SCRIPT_WORKLOAD

    return RunManifest(run_dir).read().workload == SCRIPT_WORKLOAD


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
    """The latest checkpoint was written by 1 + len(parts) ranks; another number resumes only when allowed."""
    if not data.checkpoints or launch.get("allow_world_size_change"):
        return
    saved = 1 + len(data.checkpoints[-1].parts)
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
    from .script_job import SCRIPT_WORKLOAD, ScriptJob

    run_dir = run_dir.resolve()
    executor = make_executor(kind, options, run_dir / LOG_DIR)
    job_type = ScriptJob if RunManifest(run_dir).read().workload == SCRIPT_WORKLOAD else TrainingJob
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
