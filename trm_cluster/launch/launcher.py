"""Acting on one submit :data:`~trm_cluster.launch.request.Request`: print it (``--dry-run``), or create,
resume or fork the run (or every run of a sweep), submit it, report, and follow it (``--wait``, debug).

Returns the command's exit status: 0 submitted (or, when followed, completed), 1 followed to a failure.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trm_cluster.launch import sweep
from trm_cluster.launch.fork import fork_advice
from trm_cluster.launch.request import Fork, Launch, NewRun, Request, Resume, Sweep, SweepResume
from trm_cluster.launch.runs import LOG_DIR, follow, preemption_steps, resume_run, submit
from trm_cluster.rundir.creation import create_run
from trm_cluster.rundir.manifest import ManifestData, RunManifest
from trm_cluster.runtime.grace import advice_from_history
from trm_cluster.scheduler.executors import ExecutorOptions, sbatch_script
from trm_cluster.scheduler.in_process import run_in_process


def launch(request: Request) -> int:
    """The one call from the command into launch/: act on ``request``, return the exit status."""
    if isinstance(request, NewRun):
        return _new(request)
    if isinstance(request, Resume):
        return _resume(request)
    if isinstance(request, Fork):
        return _fork(request)
    if isinstance(request, Sweep):
        return _sweep(request)
    return _resume_sweep(request)


def _new(request: NewRun) -> int:
    """Write the new run's manifest (its W&B run id chosen here, once) and submit its job."""
    launch = request.launch
    if launch.dry_run:
        return _dry_run(launch.executor, request.config, request.run_dir)
    steps = int(request.config["run"].get("steps", 0))
    preempt_at = _rehearsal(launch.preemptions, steps, request.name, script=request.script)
    create_run(request.run_dir, request.name, request.workload, request.config, request.wandb,
               launch.executor.max_requeues, _record(launch, preempt_at))  # fmt: skip
    return _submit_and_report(request.run_dir, launch, "allow", preempt_at)


def _resume(request: Resume) -> int:
    """Record the flags' config changes in the run and submit it again; a rehearsal counts its steps
    from where the run stands."""
    launch = request.launch
    if launch.dry_run:
        return _dry_run(launch.executor, request.config, request.run_dir)
    current = RunManifest(request.run_dir).read()
    remaining = int(request.config["run"].get("steps", current.total_steps)) - current.step
    steps = _rehearsal(launch.preemptions, remaining, str(request.run_dir), script=request.script)
    preempt_at = tuple(current.step + s for s in steps)
    data = resume_run(request.run_dir, request.config, _record(launch, preempt_at), request.wandb.changes())
    _print_changes(data)
    if not request.script:
        advice = advice_from_history(data.segments, data.wandb.mode, launch.executor.signal_delay_s)
        if advice is not None and launch.kind in ("slurm", "local"):
            print(f"warning: from this run's measured history: {advice}")
    return _submit_and_report(request.run_dir, launch, "must" if request.must_resume else "allow", preempt_at)


def _fork(request: Fork) -> int:
    """A new run from another run's checkpoint (fork.py); the parent is only read."""
    # here, not at the top: only a fork reads and writes checkpoints in this process (torch)
    from trm_cluster.launch.fork_state import fork_run

    launch, step = request.launch, request.step
    if launch.dry_run:
        return _dry_run(launch.executor, request.config, request.run_dir)
    parent = RunManifest(request.point.run_dir).read()
    remaining = int(request.config["run"].get("steps", parent.total_steps)) - step
    preempt_at = tuple(step + s for s in preemption_steps(launch.preemptions, remaining, request.name))
    data = fork_run(request.point, request.run_dir, request.name, request.config, request.wandb,
                    launch.executor.max_requeues, _record(launch, preempt_at))  # fmt: skip
    print(f"forked from {parent.name} ({request.point.run_dir.resolve()}) at step {step}")
    _print_changes(data)
    advice = fork_advice(parent, data.wandb.mode, launch.executor.signal_delay_s)
    if advice is not None and launch.kind in ("slurm", "local"):
        print(advice)
    return _submit_and_report(request.run_dir, launch, "allow", preempt_at)


def _sweep(request: Sweep) -> int:
    """Every element at once, as one job array (sweep.py)."""
    if request.launch.dry_run:
        for element in request.elements:
            print(f"# {element.run_dir}: {' '.join(element.flags)}")
        first = request.elements[0]
        return _dry_run(request.launch.executor, first.config, first.run_dir, array=len(request.elements))
    return sweep.run(request)


def _resume_sweep(request: SweepResume) -> int:
    """The sweep's unfinished elements, each resumed as ``--resume ELEMENT`` would be, as one new array."""
    planned = sweep.unfinished(request)
    first = planned[0]
    if first.launch.dry_run:
        return _dry_run(first.launch.executor, first.config, first.run_dir, array=len(planned))
    return sweep.resume(request.sweep_dir, planned)


def _rehearsal(count: int, steps: int, seed: str, script: bool) -> tuple[int, ...]:
    """The steps after which the job preempts itself (--preemptions); a script's total must be given."""
    if script and count and steps <= 0:
        raise ValueError(
            "--preemptions N with --script needs --steps S: the script's own total is known only once it runs"
        )
    return preemption_steps(count, steps, seed)


def _record(launch: Launch, preempt_at: tuple[int, ...]) -> dict[str, Any]:
    return {**launch.record, "preempt_at": list(preempt_at)}


def _print_changes(data: ManifestData) -> None:
    if data.config_changes and data.config_changes[-1].at_step == data.step:
        for key, (old, new) in data.config_changes[-1].changes.items():
            print(f"config change at step {data.step}: {key}: {old!r} -> {new!r}")


def _dry_run(executor: ExecutorOptions, config: Mapping[str, Any], run_dir: Path, array: int = 0) -> int:
    """Print the run directory, the resolved config and the sbatch script; write nothing. ``array``: a
    sweep of that many elements (run_dir: its first), one array with the sweep's logs."""
    print(f"# run directory: {run_dir}")
    print("# resolved config:")
    print("\n".join(f"#   {line}" for line in json.dumps(config, indent=2).splitlines()))
    logs = (run_dir.parent if array else run_dir) / LOG_DIR
    print(sbatch_script(executor, logs, array=array), end="")
    return 0


def _submit_and_report(run_dir: Path, launch: Launch, wandb_resume: str, preempt_at: tuple[int, ...]) -> int:
    """Submit the run's job and say where it is; debug runs it here, ``--wait`` follows it to its end."""
    submission = submit(
        run_dir, launch.kind, launch.executor, wandb_resume=wandb_resume, preempt_at=preempt_at
    )
    job = submission.job
    print(f"submitted job {job.job_id} ({launch.kind})")
    print(f"  run dir:  {run_dir}")
    print(f"  logs:     {job.paths.stdout}")
    print(f"            {job.paths.stderr}")
    print(f"  W&B run:  {submission.run_id}")
    if preempt_at:
        print(f"  rehearsal: preemption signals after steps {', '.join(map(str, preempt_at))}")
    if launch.kind == "debug":
        error = run_in_process(job)
        if error is not None:
            print(f"trm-submit: job failed: {error}", file=sys.stderr)
    elif not launch.wait:
        return 0
    else:
        for line in follow(submission):
            print(line, flush=True)
    data = RunManifest(run_dir).read()
    print(f"run {data.status} at step {data.step}/{data.total_steps}")
    last = data.segments[-1] if data.segments else None
    if data.status == "failed" and last is not None and last.message:
        print(f"  segment {last.index}: {last.message.splitlines()[-1]}")
    return 0 if data.status == "completed" else 1
