"""``python -m trm_cluster.submit``: start a run (or resume one) through submitit.

The preset (``--preset NAME|PATH``, or the run's own config with ``--resume RUN_DIR``) supplies the
defaults of every flag, so ``--help`` shows the values that will actually be used.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

import tyro

from trm_cluster.core.config import RunConfig
from trm_cluster.core.moved import current_reference
from trm_cluster.core.pipes import quiet_on_broken_pipe
from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.core.workload import Workload, dataclass_from_dict, load_workload
from trm_cluster.launch import sweep
from trm_cluster.launch.flags import (
    expand_name_shorthands,
    explicit_run_flags,
    previous_executor_options,
    split_script_args,
)
from trm_cluster.launch.fork import ForkPoint, fork_advice, fork_run, fork_step, fork_wandb
from trm_cluster.launch.presets import PresetError, load_preset
from trm_cluster.launch.runs import (
    LOG_DIR,
    config_differences,
    follow,
    preemption_steps,
    resolved_config,
    resume_run,
    resumed_script_config,
    submit,
)
from trm_cluster.rundir.creation import create_run, create_script_run, is_script_run, script_config
from trm_cluster.rundir.manifest import ManifestData, ManifestError, RunManifest
from trm_cluster.rundir.sweep_record import is_sweep
from trm_cluster.runtime.grace import advice_from_history
from trm_cluster.scheduler.executors import ExecutorOptions, resolve_kind, sbatch_script
from trm_cluster.scheduler.in_process import run_in_process
from trm_cluster.scheduler.script_job import NoJobConfig

JobT = TypeVar("JobT")
DEFAULT_PRESET = "tiny"


@dataclass
class SubmitArgs(Generic[JobT]):
    """Submit a training run through submitit (Slurm, local processes, or in-process debug)."""

    job: Annotated[JobT, tyro.conf.arg(name="")]
    run: Annotated[RunConfig, tyro.conf.arg(name="")]
    executor: Annotated[ExecutorOptions, tyro.conf.arg(name="")] = field(default_factory=ExecutorOptions)
    preset: str = DEFAULT_PRESET
    """A preset name from jobs/ or a path to a preset file (.toml, .yaml or .yml)."""
    script: Path | None = None
    """Your own training script (it opens ``trm_cluster.session()`` around its loop) instead of a preset."""
    entry: str | None = None
    """Or a ``package.module:function`` to call instead of a script."""
    script_args: tuple[str, ...] = ()
    """Everything after --script-args (or after a bare --) goes to the script, as its own arguments."""
    resume: Path | None = None
    """Continue the run in this directory (same W&B run); flags given here override its config."""
    fork: str | None = None
    """RUN_DIR[@STEP]: start a NEW run (own directory and W&B run, W&B group: the parent's name) from
    that run's checkpoint at STEP (default: its newest); flags given here override its config."""
    sweep: tuple[str, ...] = ()
    """KEY=V1,V2,... (repeatable): one run per element of the cartesian product of the values, all
    submitted as ONE job array; --run-dir is then the sweep's folder (one run directory per element)."""
    run_dir: Path | None = None
    """Directory of a new run (default: runs/<name>)."""
    name: str | None = None
    """Run name (default: <preset>-<date>-<time>)."""
    wandb_project: str | None = None
    """W&B project (default: $WANDB_PROJECT, else peptide-trm; for a script, its name)."""
    wandb_entity: str | None = None
    wandb_group: str | None = None
    """W&B group (default: $WANDB_RUN_GROUP); kept for every requeued process, changeable on --resume."""
    wandb_tags: tuple[str, ...] | None = None
    """W&B tags (default: $WANDB_TAGS, comma-separated)."""
    wandb_job_type: str | None = None
    """W&B job type (default: $WANDB_JOB_TYPE)."""
    wandb_notes: str | None = None
    """W&B notes (default: $WANDB_NOTES)."""
    wandb_mode: Literal["auto", "online", "offline"] = "auto"
    """auto: online when an API key is configured, else offline."""
    wandb: bool = True
    """Log to W&B; --no-wandb disables it entirely."""
    wandb_must_resume: bool = False
    """With --resume: fail unless the W&B run exists (W&B's resume="must")."""
    preemptions: int = 0
    """Rehearsal: the job sends itself N real preemption signals at random steps, one per process,
    so it is preempted and requeued exactly N times."""
    dry_run: bool = False
    """Print the resolved config and the sbatch script, then exit without writing anything."""
    wait: bool = False
    """Follow the job to its end; exit 0 only if the run completed."""


@quiet_on_broken_pipe
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except (ValueError, ManifestError, PresetError) as error:
        print(f"trm-submit: error: {error}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    argv, script_args = split_script_args(argv)
    argv, axes = sweep.split_sweep_flags(argv)
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--preset", default=None)
    early.add_argument("--resume", type=Path, default=None)
    early.add_argument("--script", type=Path, default=None)
    early.add_argument("--entry", default=None)
    early.add_argument("--fork", default=None)
    known, _ = early.parse_known_args(argv)
    if known.fork and known.resume:
        raise ValueError("--fork starts a new run and --resume continues one: pass only one of them")
    if axes and (known.fork or known.resume or known.script or known.entry):
        what = "--fork" if known.fork else "--resume" if known.resume else "--script/--entry"
        raise ValueError(f"--sweep starts new runs of a preset; it does not combine with {what}")
    if known.resume and is_sweep(known.resume):
        return _resume_sweep(argv, known)
    known.source = ForkPoint.parse(known.fork).run_dir if known.fork else known.resume  # the defaults
    if known.script or known.entry or (known.source and is_script_run(known.source)):
        return _script_main(argv, script_args, known)
    if script_args is not None:
        raise ValueError("--script-args (or --) passes arguments to a --script or --entry; this run has none")
    if axes:
        return _sweep(argv, axes, known)
    workload, args, config, kind, launch = _parse(argv, known)
    if args.resume is not None:
        return _resume(args, config, kind, launch)
    if args.fork is not None:
        return _fork(args, config, kind, launch)
    return _new(args, workload, config, kind, launch)


def _parse(
    argv: list[str], known: argparse.Namespace
) -> tuple[Workload[Any], SubmitArgs[Any], dict[str, Any], str, dict[str, Any]]:
    """The flags over the preset's (or the source run's) values: the workload, args, config, executor."""
    workload, defaults, run_config = _defaults(known.preset, known.source)
    args: SubmitArgs[Any] = tyro.cli(
        SubmitArgs[workload.config_type],  # type: ignore[name-defined]
        default=SubmitArgs(
            job=defaults,
            run=run_config,
            executor=previous_executor_options(known.source),
            preset=known.preset or DEFAULT_PRESET,
            resume=known.resume,
        ),
        args=expand_name_shorthands(argv, workload.config_type),
        prog="python -m trm_cluster.submit",
    )
    args.run.validate()
    kind = resolve_kind(args.executor.executor)
    args.executor.validate(kind)
    return workload, args, resolved_config(args.run, args.job), kind, _launch_record(args, kind)


def _sweep(argv: list[str], axes: list[sweep.Axis], known: argparse.Namespace) -> int:
    """``--sweep``: each element parsed exactly as one submit with its flags (sweep.py), one array."""
    workload, base, _, kind, _ = _parse(argv, known)
    sweep.check_axes(axes, argv, workload.config_type)
    preset = load_preset(base.preset)
    name = base.name or sweep.default_name(preset.name)
    sweep_dir = (base.run_dir or Path("runs") / name).resolve()

    def element(flags: list[str]) -> sweep.Element:
        _, args, config, _, launch = _parse(argv + flags, known)
        return sweep.Element(args, preset.workload, config, launch)

    planned = sweep.plan(sweep_dir, name, axes, workload.config_type, element)
    if base.dry_run:
        for e in planned:
            print(
                f"# {sweep_dir / e.dir.name}: {' '.join(sweep.element_argv(e.values, workload.config_type))}"
            )
        return _dry_run(base, planned[0].config, planned[0].dir, array=len(planned))
    wandb = dataclasses.replace(_wandb_options(base, "peptide-trm"), group=base.wandb_group or name)
    return sweep.run(sweep_dir, name, axes, planned, wandb, kind)


def _resume_sweep(argv: list[str], known: argparse.Namespace) -> int:
    """``--resume SWEEP_DIR``: every unfinished element, each as ``--resume ELEMENT`` would be, one array."""
    sweep_dir = Path(known.resume).resolve()

    def element(run_dir: Path) -> sweep.Element:
        _, args, config, kind, launch = _parse(argv, argparse.Namespace(**{**vars(known), "source": run_dir}))
        return sweep.Element(args, "", config, launch, kind=kind, wandb_changes=_wandb_changes(args))

    planned = sweep.unfinished(sweep_dir, element)
    if planned[0].args.dry_run:
        return _dry_run(planned[0].args, planned[0].config, planned[0].dir, array=len(planned))
    return sweep.resume(sweep_dir, planned, "must" if planned[0].args.wandb_must_resume else "allow")


def _launch_record(args: SubmitArgs[Any], kind: str) -> dict[str, Any]:
    return {**dataclasses.asdict(args.executor), "executor": kind, "preset": args.preset, "cwd": os.getcwd()}


def _script_main(argv: list[str], script_args: list[str] | None, known: argparse.Namespace) -> int:
    """A run of the user's own script (``--script``/``--entry``), new or resumed."""
    args: SubmitArgs[Any] = tyro.cli(
        SubmitArgs[NoJobConfig],
        default=SubmitArgs(
            job=NoJobConfig(),
            run=RunConfig(),
            executor=previous_executor_options(known.source),
            preset="",
            resume=known.resume,
        ),
        args=argv,
        prog="python -m trm_cluster.submit",
    )
    kind = resolve_kind(args.executor.executor)
    args.executor.validate(kind)
    run_flags = explicit_run_flags(argv, args.run)
    dataclass_from_dict(RunConfig, run_flags).validate()
    launch = _launch_record(args, kind)
    if args.fork is not None:
        parent = RunManifest(ForkPoint.parse(args.fork).run_dir).read()
        return _fork(args, resumed_script_config(parent.config, run_flags, script_args), kind, launch)
    if args.resume is not None:
        run_dir = args.resume.resolve()
        current = RunManifest(run_dir).read()
        config = resumed_script_config(current.config, run_flags, script_args)
        if args.dry_run:
            return _dry_run(args, config, run_dir)
        total = int(config["run"].get("steps", current.total_steps))
        preempt_at = tuple(current.step + s for s in _script_preemptions(args, total - current.step, run_dir))
        data = resume_run(run_dir, config, {**launch, "preempt_at": list(preempt_at)}, _wandb_changes(args))
        _print_changes(data)
        return _submit_and_report(
            args, run_dir, kind, "must" if args.wandb_must_resume else "allow", preempt_at
        )
    stem = (args.script.stem if args.script else str(args.entry).rpartition(":")[2]) or "script"
    name = args.name or f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = (args.run_dir or Path("runs") / name).resolve()
    config = {
        "run": run_flags,
        "job": {},
        "script": script_config(args.script, args.entry, script_args or []),
    }
    if args.dry_run:
        return _dry_run(args, config, run_dir)
    preempt_at = _script_preemptions(args, int(run_flags.get("steps", 0)), name)
    wandb = _wandb_options(args, default_project=stem)
    create_script_run(
        run_dir, args.script, script_args or [], run_flags, entry=args.entry, name=name, wandb=wandb,
        max_requeues=args.executor.max_requeues, launch={**launch, "preempt_at": list(preempt_at)},
    )  # fmt: skip
    return _submit_and_report(args, run_dir, kind, "allow", preempt_at)


def _wandb_options(args: SubmitArgs[Any], default_project: str) -> WandbOptions:
    return WandbOptions.resolve(
        default_project,
        mode=args.wandb_mode if args.wandb else "disabled",
        project=args.wandb_project,
        entity=args.wandb_entity,
        group=args.wandb_group,
        tags=args.wandb_tags,
        job_type=args.wandb_job_type,
        notes=args.wandb_notes,
    )


def _wandb_changes(args: SubmitArgs[Any]) -> dict[str, Any]:
    """W&B settings given again on --resume (the project, entity and mode stay those of the run)."""
    given = {"group": args.wandb_group, "tags": args.wandb_tags, "job_type": args.wandb_job_type,
             "notes": args.wandb_notes}  # fmt: skip
    return {key: value for key, value in given.items() if value is not None}


def _script_preemptions(args: SubmitArgs[Any], steps: int, seed: Path | str) -> tuple[int, ...]:
    if args.preemptions and steps <= 0:
        raise ValueError(
            "--preemptions N with --script needs --steps S: the script's own total is known only once it runs"
        )
    return preemption_steps(args.preemptions, steps, str(seed))


def _defaults(preset_name: str | None, resume: Path | None) -> tuple[Workload[Any], Any, RunConfig]:
    """The workload and the values flags default to: the preset's, or the resumed run's own."""
    if resume is None:
        preset = load_preset(preset_name or DEFAULT_PRESET)
        workload = load_workload(preset.workload)
        return workload, workload.config_from_dict(preset.job), dataclass_from_dict(RunConfig, preset.run)
    data = RunManifest(resume).read()
    workload = load_workload(data.workload)
    if preset_name is not None:
        preset = load_preset(preset_name)
        preset_config = resolved_config(
            dataclass_from_dict(RunConfig, preset.run),
            load_workload(preset.workload).config_from_dict(preset.job),
        )
        differing = config_differences(data.config, preset_config)
        if current_reference(preset.workload) != current_reference(data.workload) or differing:
            keys = ", ".join(sorted(differing)) or "workload"
            raise ValueError(
                f"preset {preset_name!r} differs from the run's config ({keys}); to change settings on resume, "
                "pass them as flags (e.g. --steps N) without --preset"
            )
    return (
        workload,
        workload.config_from_dict(data.config["job"]),
        dataclass_from_dict(RunConfig, data.config["run"]),
    )


def _new(
    args: SubmitArgs[Any], workload: Workload[Any], config: dict[str, Any], kind: str, launch: dict[str, Any]
) -> int:
    preset = load_preset(args.preset)
    name = args.name or f"{preset.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = (args.run_dir or Path("runs") / name).resolve()
    if args.dry_run:
        return _dry_run(args, config, run_dir)
    wandb = _wandb_options(args, default_project="peptide-trm")
    preempt_at = preemption_steps(args.preemptions, args.run.steps, name)
    launch = {**launch, "preempt_at": list(preempt_at)}
    create_run(run_dir, name, preset.workload, config, wandb, args.executor.max_requeues, launch)
    return _submit_and_report(args, run_dir, kind, "allow", preempt_at)


def _resume(args: SubmitArgs[Any], config: dict[str, Any], kind: str, launch: dict[str, Any]) -> int:
    assert args.resume is not None
    run_dir = args.resume.resolve()
    if args.dry_run:
        return _dry_run(args, config, run_dir)
    current = RunManifest(run_dir).read().step
    remaining = int(config["run"]["steps"]) - current
    preempt_at = tuple(current + s for s in preemption_steps(args.preemptions, remaining, str(run_dir)))
    data = resume_run(run_dir, config, {**launch, "preempt_at": list(preempt_at)}, _wandb_changes(args))
    _print_changes(data)
    advice = advice_from_history(data.segments, data.wandb.mode, args.executor.signal_delay_s)
    if advice is not None and kind in ("slurm", "local"):
        print(f"warning: from this run's measured history: {advice}")
    return _submit_and_report(args, run_dir, kind, "must" if args.wandb_must_resume else "allow", preempt_at)


def _fork(args: SubmitArgs[Any], config: dict[str, Any], kind: str, launch: dict[str, Any]) -> int:
    """A new run from another run's checkpoint (fork.py); the parent is only read."""
    assert args.fork is not None
    point = ForkPoint.parse(args.fork)
    parent = RunManifest(point.run_dir).read()
    name = args.name or f"{parent.name}-fork-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = (args.run_dir or point.run_dir.resolve().parent / name).resolve()
    step = fork_step(point)
    if args.dry_run:
        return _dry_run(args, config, run_dir)
    remaining = int(config["run"].get("steps", parent.total_steps)) - step
    preempt_at = tuple(step + s for s in preemption_steps(args.preemptions, remaining, name))
    mode = "disabled" if not args.wandb else (None if args.wandb_mode == "auto" else args.wandb_mode)
    wandb = fork_wandb(
        parent, mode=mode, project=args.wandb_project, entity=args.wandb_entity, group=args.wandb_group,
        tags=args.wandb_tags, job_type=args.wandb_job_type, notes=args.wandb_notes,
    )  # fmt: skip
    launch = {**launch, "preempt_at": list(preempt_at)}
    data = fork_run(point, run_dir, name, config, wandb, args.executor.max_requeues, launch)
    print(f"forked from {parent.name} ({point.run_dir.resolve()}) at step {step}")
    _print_changes(data)
    advice = fork_advice(parent, data.wandb.mode, args.executor.signal_delay_s)
    if advice is not None and kind in ("slurm", "local"):
        print(advice)
    return _submit_and_report(args, run_dir, kind, "allow", preempt_at)


def _print_changes(data: ManifestData) -> None:
    if data.config_changes and data.config_changes[-1].at_step == data.step:
        for key, (old, new) in data.config_changes[-1].changes.items():
            print(f"config change at step {data.step}: {key}: {old!r} -> {new!r}")


def _dry_run(args: SubmitArgs[Any], config: dict[str, Any], run_dir: Path, array: int = 0) -> int:
    """``array``: a sweep of that many elements (run_dir: its first), one array with the sweep's logs."""
    import json

    print(f"# run directory: {run_dir}")
    print("# resolved config:")
    print("\n".join(f"#   {line}" for line in json.dumps(config, indent=2).splitlines()))
    logs = (run_dir.parent if array else run_dir) / LOG_DIR
    print(sbatch_script(args.executor, logs, array=array), end="")
    return 0


def _submit_and_report(
    args: SubmitArgs[Any], run_dir: Path, kind: str, wandb_resume: str, preempt_at: tuple[int, ...]
) -> int:
    submission = submit(run_dir, kind, args.executor, wandb_resume=wandb_resume, preempt_at=preempt_at)
    job = submission.job
    print(f"submitted job {job.job_id} ({kind})")
    print(f"  run dir:  {run_dir}")
    print(f"  logs:     {job.paths.stdout}")
    print(f"            {job.paths.stderr}")
    print(f"  W&B run:  {submission.run_id}")
    if preempt_at:
        print(f"  rehearsal: preemption signals after steps {', '.join(map(str, preempt_at))}")
    if kind == "debug":
        error = run_in_process(job)
        if error is not None:
            print(f"trm-submit: job failed: {error}", file=sys.stderr)
    elif not args.wait:
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


if __name__ == "__main__":
    sys.exit(main())
