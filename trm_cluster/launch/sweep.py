"""``submit --sweep KEY=V1,V2,...``: the cartesian product of config overrides, as ONE job array.

Why an array: one ``sbatch`` for N runs, one line in ``squeue``, and Slurm requeues each element on its
own (submitit's requeue names the element, ``ARRAY_TASK``), so a preempted element never restarts its
peers. Each element is exactly the run a single ``submit`` with those flags would be (parse.py reads the
sweep's argv plus ``--KEY VALUE`` as that submit): its own directory under the sweep folder,
manifest, W&B run id, and W&B group (the sweep's name unless ``--wandb-group``). Everything is checked
before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
import sys
import time
import typing
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import submitit

from trm_cluster.core.config import RunConfig
from trm_cluster.launch.request import Axis, Resume, Sweep, SweepResume
from trm_cluster.launch.runs import LOG_DIR, preemption_steps, refuse_resume, resume_run
from trm_cluster.rundir.creation import create_run
from trm_cluster.rundir.manifest import RunManifest, utc_now
from trm_cluster.rundir.sweep_record import read_record, write_record
from trm_cluster.scheduler.executors import ExecutorOptions, make_executor
from trm_cluster.scheduler.in_process import run_in_process
from trm_cluster.scheduler.job import TrainingJob

NAME_LIMIT = 120
"""Longest element directory name kept as is; longer ones are cut and given a digest (names stay unique)."""


def split_sweep_flags(argv: list[str]) -> tuple[list[str], list[Axis]]:
    """Take every ``--sweep KEY=V1,V2`` (or ``--sweep=...``) out of ``argv``; refuse malformed ones."""
    rest: list[str] = []
    axes: list[Axis] = []
    items = iter(argv)
    for arg in items:
        if arg == "--sweep":
            item = next(items, None)
            if item is None or item.startswith("--"):
                raise ValueError("--sweep takes KEY=V1,V2,... (e.g. --sweep lr=0.001,0.01)")
            axes.append(parse_axis(item))
        elif arg.startswith("--sweep="):
            axes.append(parse_axis(arg.partition("=")[2]))
        else:
            rest.append(arg)
    keys = [a.flag for a in axes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"--sweep names {sorted(k for k in keys if keys.count(k) > 1)[0][2:]} twice")
    return rest, axes


def parse_axis(item: str) -> Axis:
    key, equals, values = item.partition("=")
    key = key.strip().removeprefix("--")
    if not equals or not key:
        raise ValueError(f"--sweep {item!r}: expected KEY=V1,V2,... (e.g. --sweep lr=0.001,0.01)")
    parts = tuple(v.strip() for v in values.split(","))
    if not values.strip() or any(not v for v in parts):
        raise ValueError(f"--sweep {key}: empty value in {values!r}; give KEY=V1,V2,...")
    if len(set(parts)) != len(parts):
        raise ValueError(f"--sweep {key}: a value is repeated in {values!r}")
    return Axis(key, parts)


def config_flags(job_type: type[Any]) -> dict[str, type[Any] | None]:
    """The flags that override a config field (RunConfig's and the job config's), with their types.

    Nested dataclasses give ``--outer.inner``; one with a ``name`` field is also its own flag (the
    ``--curriculum delayed-spectrum`` shorthand of submit)."""
    flags: dict[str, type[Any] | None] = {}

    def walk(kind: type[Any], prefix: str) -> None:
        for name, hint in typing.get_type_hints(kind).items():
            flag = prefix + name.replace("_", "-")
            if dataclasses.is_dataclass(hint):
                if any(f.name == "name" for f in dataclasses.fields(hint)):
                    flags[flag] = str
                walk(hint, flag + ".")  # type: ignore[arg-type]
            else:
                flags[flag] = hint

    walk(RunConfig, "")
    walk(job_type, "")
    return flags


def check_axes(axes: Sequence[Axis], argv: Sequence[str], job_type: type[Any]) -> None:
    """Each KEY must be a config flag, and not given as a plain flag too (which one would win?)."""
    flags = config_flags(job_type)
    given = {arg.partition("=")[0] for arg in argv if arg.startswith("--")}
    settings = [a.flag.removesuffix(".name") for a in axes]  # --curriculum is --curriculum.name
    twice = next((s for s in settings if settings.count(s) > 1), None)
    if twice is not None:
        raise ValueError(f"--sweep {twice[2:]} and {twice[2:]}.name are one setting: sweep it once")
    for axis in axes:
        name = axis.flag[2:]
        if name not in flags:
            close = sorted(f for f in flags if name in f or f in name)[:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else " (see --help for the config flags)"
            raise ValueError(f"--sweep {axis.key}: not a config flag of this preset{hint}")
        if axis.flag in given or f"{axis.flag}.name" in given:
            raise ValueError(f"--sweep {axis.key} and {axis.flag} both given: pass it in one of them")


def elements(axes: Sequence[Axis]) -> list[dict[str, str]]:
    """The cartesian product, first axis slowest: [{key: value, ...}, ...]."""
    return [
        dict(zip((a.key for a in axes), combo, strict=True))
        for combo in itertools.product(*(a.values for a in axes))
    ]


def element_argv(values: dict[str, str], job_type: type[Any]) -> list[str]:
    """The flags a single submit of this element would be given (a bool: ``--x`` / ``--no-x``)."""
    flags = config_flags(job_type)
    argv: list[str] = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if flags.get(flag[2:]) is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"--sweep {key}: {value!r} is not a boolean (true or false)")
            on = value.lower() in ("true", "1", "yes")
            argv.append(flag if on else "--no-" + flag[2:])
        else:
            argv += [flag, value]
    return argv


def element_name(values: dict[str, str]) -> str:
    """``lr=0.001,curriculum=delayed``; a name that had to change (a character a file name should not
    hold, now ``_``, or too long, now cut) ends in a digest of the values, so names stay distinct."""
    raw = ",".join(f"{k}={v}" for k, v in values.items())
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", raw)
    if safe == raw and len(raw) <= NAME_LIMIT:
        return raw
    return f"{safe[: NAME_LIMIT - 9]}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"


def refuse_occupied(sweep_dir: Path) -> None:
    """A sweep needs a new folder: one that holds anything is refused before any element is parsed."""
    if sweep_dir.exists() and any(sweep_dir.iterdir()):
        held = ", ".join(sorted(p.name for p in sweep_dir.iterdir())[:3])
        raise ValueError(f"{sweep_dir} is not empty (holds {held}); a sweep needs a new --run-dir")


def create(request: Sweep) -> None:
    """Write every element's manifest (own W&B id, the sweep's group) and the sweep record."""
    sweep_dir, wandb = request.sweep_dir, request.wandb
    for element in request.elements:
        launch = {**request.launch.record, "preempt_at": list(element.preempt_at), "sweep": str(sweep_dir),
                  "log_dir": str(sweep_dir / LOG_DIR)}  # fmt: skip
        create_run(element.run_dir, element.name, request.workload, element.config, wandb,
                   request.launch.executor.max_requeues, launch)  # fmt: skip
    record = {
        "name": request.name,
        "created_at": utc_now(),
        "executor": request.launch.kind,
        "axes": [{"key": a.key, "values": list(a.values)} for a in request.axes],
        "elements": [
            {"dir": e.run_dir.name, "values": dict(e.values), "job_id": None} for e in request.elements
        ],
        "array_job_id": None,
        "wandb_group": wandb.group,
        "log_dir": LOG_DIR,
    }
    write_record(sweep_dir, record)


def submit_array(
    sweep_dir: Path,
    kind: str,
    options: ExecutorOptions,
    dirs: Sequence[Path],
    rehearsals: Sequence[tuple[int, ...]],
    wandb_resume: str = "allow",
) -> list[submitit.Job[Any]]:
    """These elements through one ``executor.batch()``: one Slurm job array (local: one process each)."""
    executor = make_executor(kind, options, sweep_dir / LOG_DIR)
    jobs = []
    with executor.batch():
        for run_dir, preempt_at in zip(dirs, rehearsals, strict=True):
            jobs.append(
                executor.submit(TrainingJob(run_dir, wandb_resume=wandb_resume, preempt_at=preempt_at))
            )
    record = read_record(sweep_dir) or {"elements": []}
    job_ids = {run_dir.name: str(job.job_id) for run_dir, job in zip(dirs, jobs, strict=True)}
    for element in record["elements"]:
        if element["dir"] in job_ids:
            element["job_id"] = job_ids[element["dir"]]
            with RunManifest(sweep_dir / element["dir"]).update() as data:
                data.launch = {**data.launch, "job_id": job_ids[element["dir"]], "submitted_at": utc_now()}
    record["array_job_id"] = str(jobs[0].job_id).partition("_")[0] if kind == "slurm" else None
    record.setdefault("submissions", []).append(
        {"time": utc_now(), "array_job_id": record["array_job_id"], "elements": list(job_ids)}
    )
    write_record(sweep_dir, record)
    return jobs


def default_name(preset: str) -> str:
    return f"{preset}-sweep-{datetime.now():%Y%m%d-%H%M%S}"


def run(request: Sweep) -> int:
    """Create, submit as one array and report; ``--wait`` (or debug) follows every element to its end."""
    create(request)
    dirs = [e.run_dir for e in request.elements]
    launch = request.launch
    jobs = submit_array(
        request.sweep_dir, launch.kind, launch.executor, dirs, [e.preempt_at for e in request.elements]
    )
    return follow(request.sweep_dir, f"submitted sweep {request.name}", dirs, jobs, launch.kind, launch.wait)


def unfinished(request: SweepResume) -> list[Resume]:
    """The elements not completed at their (new) last step, each checked (not active, same ranks) as
    ``--resume ELEMENT`` would be, before anything is written."""
    planned = []
    for element in request.elements:
        data = RunManifest(element.run_dir).read()
        if data.status == "completed" and data.step >= int(element.config["run"]["steps"]):
            continue
        refuse_resume(data, element.launch.record)
        planned.append(element)
    if not planned:
        raise ValueError(
            f"every element of {request.sweep_dir} is completed; pass --steps N to train them further"
        )
    return planned


def resume(sweep_dir: Path, planned: Sequence[Resume]) -> int:
    """Resume these elements (each as ``--resume`` would: config changes recorded) as one new array."""
    rehearsals = []
    for element in planned:
        current = RunManifest(element.run_dir).read().step
        remaining = int(element.config["run"]["steps"]) - current
        steps = preemption_steps(element.launch.preemptions, remaining, str(element.run_dir))
        preempt_at = tuple(current + s for s in steps)
        launch = {**element.launch.record, "preempt_at": list(preempt_at), "sweep": str(sweep_dir),
                  "log_dir": str(sweep_dir / LOG_DIR)}  # fmt: skip
        data = resume_run(element.run_dir, element.config, launch, element.wandb.changes())
        if data.config_changes and data.config_changes[-1].at_step == data.step:
            for key, (old, new) in data.config_changes[-1].changes.items():
                print(f"{element.run_dir.name}: config change at step {data.step}: {key}: {old!r} -> {new!r}")
        rehearsals.append(preempt_at)
    first = planned[0]
    dirs = [e.run_dir for e in planned]
    wandb_resume = "must" if first.must_resume else "allow"
    kind = first.launch.kind
    jobs = submit_array(sweep_dir, kind, first.launch.executor, dirs, rehearsals, wandb_resume)
    name = (read_record(sweep_dir) or {}).get("name", sweep_dir.name)
    return follow(sweep_dir, f"resumed sweep {name}", dirs, jobs, kind, first.launch.wait)


def follow(
    sweep_dir: Path,
    title: str,
    dirs: Sequence[Path],
    jobs: Sequence[submitit.Job[Any]],
    kind: str,
    wait: bool,
) -> int:
    """Report the submission; with ``--wait`` (or debug) follow every element to its end."""
    record = read_record(sweep_dir) or {}
    array = record.get("array_job_id")
    print(f"{title}: {len(jobs)} elements as {'array job ' + array if array else 'jobs'} ({kind})")
    print(f"  sweep dir: {sweep_dir}")
    print(f"  logs:      {sweep_dir / LOG_DIR}")
    width = max(len(d.name) for d in dirs)
    for run_dir, job in zip(dirs, jobs, strict=True):
        run_id = RunManifest(run_dir).read().wandb.run_id
        print(f"  {run_dir.name:<{width}}  job {job.job_id}  W&B {run_id}")
    if kind == "debug":  # no scheduler: one element after the other, in this process
        for run_dir, job in zip(dirs, jobs, strict=True):
            error = run_in_process(job)
            if error is not None:
                print(f"trm-submit: {run_dir.name} failed: {error}", file=sys.stderr)
    elif not wait:
        return 0
    else:
        while not all(job.done() for job in jobs):
            time.sleep(1.0)
    states = [RunManifest(d).read() for d in dirs]
    for run_dir, data in zip(dirs, states, strict=True):
        print(f"{run_dir.name}: {data.status} at step {data.step}/{data.total_steps}")
    return 0 if all(d.status == "completed" for d in states) else 1
