"""``submit``'s argv -> one :data:`~trm_cluster.launch.request.Request`, top to bottom, in one place.

The stages, in order: the script's own arguments (after ``--script-args`` or ``--``) and the ``--sweep``
flags are cut out; a pre-pass reads the five flags that say what is submitted and where every other
flag's default comes from (the preset, or the resumed or forked run); tyro then reads all the flags over
those defaults. Every check that needs no write runs here, so a refused submission leaves the disk as
it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import tyro

from trm_cluster.core.config import RunConfig
from trm_cluster.core.moved import current_reference
from trm_cluster.core.workload import (
    SCRIPT_WORKLOAD,
    Workload,
    dataclass_from_dict,
    load_workload,
)
from trm_cluster.launch import sweep
from trm_cluster.launch.flags import (
    DEFAULT_PRESET,
    SubmitArgs,
    expand_name_shorthands,
    explicit_run_flags,
    previous_executor_options,
    split_script_args,
    wandb_options,
)
from trm_cluster.launch.fork import ForkPoint, fork_step, fork_wandb
from trm_cluster.launch.presets import load_preset
from trm_cluster.launch.request import (
    Axis,
    Fork,
    Launch,
    NewRun,
    Request,
    Resume,
    Sweep,
    SweepElement,
    SweepResume,
)
from trm_cluster.launch.runs import (
    config_differences,
    preemption_steps,
    resolved_config,
    resumed_script_config,
)
from trm_cluster.rundir.creation import is_script_run, script_config
from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.rundir.sweep_record import SWEEP_RECORD, is_sweep, read_record
from trm_cluster.scheduler.executors import resolve_kind
from trm_cluster.scheduler.script_job import NoJobConfig

PROG = "python -m trm_cluster.submit"


def parse(argv: Sequence[str]) -> Request:
    """The request ``argv`` makes. Refusals raise ValueError (ManifestError, PresetError); ``--help`` and
    what tyro or the pre-pass cannot read exit (SystemExit) with their own message."""
    argv, script_args = split_script_args(list(argv))  # what follows --script-args or -- is the script's
    argv, axes = sweep.split_sweep_flags(argv)  # KEY=V1,V2 read here; tyro lists --sweep for --help only
    route = _route(argv, axes)
    if route.resume and is_sweep(route.resume):
        return _sweep_resume(argv, route)
    source = ForkPoint.parse(route.fork).run_dir if route.fork else route.resume  # it gives the defaults
    if (route.script or route.entry) and source and not is_script_run(source):
        action = "fork" if route.fork else "resume"
        raise ValueError(
            f"{source} is a preset's run, not a script's: --script/--entry start a script run; "
            f"drop them to {action} it"
        )
    if route.script or route.entry or (source and is_script_run(source)):
        return _script(argv, script_args, route, source)
    if script_args is not None:
        raise ValueError("--script-args (or --) passes arguments to a --script or --entry; this run has none")
    if axes:
        return _sweep(argv, axes, route)
    one = _single(argv, route, source)  # a preset's run: new, resumed or forked
    if one.args.resume is not None:
        return _resume(one, one.args.resume.resolve(), script=False)
    if one.args.fork is not None:
        return _fork(one.args, one.config, one.launch)
    return _new(one)


@dataclass(frozen=True)
class _Route:
    """The flags read before the rest: what is submitted, and where the other flags' defaults come from."""

    preset: str | None
    resume: Path | None
    script: Path | None
    entry: str | None
    fork: str | None


def _route(argv: list[str], axes: Sequence[Axis]) -> _Route:
    """The pre-pass (argparse, everything else left for tyro); refuses kinds that do not combine."""
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--preset", default=None)
    early.add_argument("--resume", type=Path, default=None)
    early.add_argument("--script", type=Path, default=None)
    early.add_argument("--entry", default=None)
    early.add_argument("--fork", default=None)
    known, _ = early.parse_known_args(argv)
    route = _Route(known.preset, known.resume, known.script, known.entry, known.fork)
    if route.fork and route.resume:
        raise ValueError("--fork starts a new run and --resume continues one: pass only one of them")
    if axes and (route.fork or route.resume or route.script or route.entry):
        what = "--fork" if route.fork else "--resume" if route.resume else "--script/--entry"
        raise ValueError(f"--sweep starts new runs of a preset; it does not combine with {what}")
    return route


@dataclass(frozen=True)
class _Parsed:
    """One run's flags over their defaults: what each kind of request is built from."""

    args: SubmitArgs[Any]
    workload: Workload[Any]
    config: dict[str, Any]
    launch: Launch


def _single(argv: list[str], route: _Route, source: Path | None) -> _Parsed:
    """The flags over the preset's values, or over those of the run ``source`` (resumed or forked)."""
    workload, defaults, run_config = _defaults(route.preset, source)
    args: SubmitArgs[Any] = tyro.cli(
        SubmitArgs[workload.config_type],  # type: ignore[name-defined]
        default=SubmitArgs(
            job=defaults,
            run=run_config,
            executor=previous_executor_options(source),
            preset=route.preset or DEFAULT_PRESET,
            resume=route.resume,
        ),
        args=expand_name_shorthands(argv, workload.config_type),
        prog=PROG,
    )
    args.run.validate()
    return _Parsed(args, workload, resolved_config(args.run, args.job), _launch(args))


def _launch(args: SubmitArgs[Any]) -> Launch:
    """The executor resolved and checked, and the launch record the manifest keeps."""
    kind = resolve_kind(args.executor.executor)
    args.executor.validate(kind)
    record = {
        **dataclasses.asdict(args.executor),
        "executor": kind,
        "preset": args.preset,
        "cwd": os.getcwd(),
    }
    return Launch(args.executor, kind, record, args.preemptions, args.dry_run, args.wait)


def _defaults(preset_name: str | None, source: Path | None) -> tuple[Workload[Any], Any, RunConfig]:
    """The workload and the values flags default to: the preset's, or the source run's own (a preset
    given with a run must then agree with its config: settings change through flags)."""
    if source is None:
        preset = load_preset(preset_name or DEFAULT_PRESET)
        workload = load_workload(preset.workload)
        return workload, workload.config_from_dict(preset.job), dataclass_from_dict(RunConfig, preset.run)
    data = RunManifest(source).read()
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


def _new(one: _Parsed) -> NewRun:
    """A new run of the preset; W&B's project defaults to the workload's name."""
    preset = load_preset(one.args.preset)
    name = one.args.name or f"{preset.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = (one.args.run_dir or Path("runs") / name).resolve()
    wandb = wandb_options(one.args).resolved(default_project=one.workload.name)
    return NewRun(run_dir, name, preset.workload, one.config, wandb, one.launch)


def _resume(one: _Parsed, run_dir: Path, script: bool) -> Resume:
    return Resume(
        run_dir, one.config, wandb_options(one.args), one.args.wandb_must_resume, script, one.launch
    )


def _fork(args: SubmitArgs[Any], config: dict[str, Any], launch: Launch) -> Fork:
    """A fork of a preset's run or of a script run: named and placed beside its parent, its step checked."""
    assert args.fork is not None
    point = ForkPoint.parse(args.fork)
    parent = RunManifest(point.run_dir).read()
    name = args.name or f"{parent.name}-fork-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = (args.run_dir or point.run_dir.resolve().parent / name).resolve()
    step = fork_step(point)
    return Fork(point, step, run_dir, name, config, fork_wandb(parent, wandb_options(args)), launch)


def _script(
    argv: list[str], script_args: list[str] | None, route: _Route, source: Path | None
) -> NewRun | Resume | Fork:
    """A run of the user's own script (``--script``/``--entry``), new, resumed or forked. Its config holds
    only the run flags given explicitly (they win over what the script passes to ``session()``)."""
    args: SubmitArgs[Any] = tyro.cli(
        SubmitArgs[NoJobConfig],
        default=SubmitArgs(
            job=NoJobConfig(),
            run=RunConfig(),
            executor=previous_executor_options(source),
            preset="",
            resume=route.resume,
        ),
        args=argv,
        prog=PROG,
    )
    launch = _launch(args)
    run_flags = explicit_run_flags(argv, args.run)
    dataclass_from_dict(RunConfig, run_flags).validate()
    if args.fork is not None:
        parent = RunManifest(ForkPoint.parse(args.fork).run_dir).read()
        return _fork(args, resumed_script_config(parent.config, run_flags, script_args), launch)
    if args.resume is not None:
        run_dir = args.resume.resolve()
        config = resumed_script_config(RunManifest(run_dir).read().config, run_flags, script_args)
        return Resume(run_dir, config, wandb_options(args), args.wandb_must_resume, True, launch)
    stem = (args.script.stem if args.script else str(args.entry).rpartition(":")[2]) or "script"
    name = args.name or f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = (args.run_dir or Path("runs") / name).resolve()
    config = {
        "run": run_flags,
        "job": {},
        "script": script_config(args.script, args.entry, script_args or []),
    }
    wandb = wandb_options(args).resolved(default_project=stem)
    return NewRun(run_dir, name, SCRIPT_WORKLOAD, config, wandb, launch)


def _sweep(argv: list[str], axes: list[Axis], route: _Route) -> Sweep:
    """``--sweep``: each element parsed exactly as one submit with its flags added; one array."""
    base = _single(argv, route, None)
    job_type = base.workload.config_type
    sweep.check_axes(axes, argv, job_type)
    preset = load_preset(base.args.preset)
    name = base.args.name or sweep.default_name(preset.name)
    sweep_dir = (base.args.run_dir or Path("runs") / name).resolve()
    sweep.refuse_occupied(sweep_dir)
    elements = []
    for values in sweep.elements(axes):
        flags = sweep.element_argv(values, job_type)
        one = _single(argv + flags, route, None)
        run_dir = sweep_dir / sweep.element_name(values)
        element = f"{name}-{run_dir.name}"
        preempt_at = preemption_steps(one.args.preemptions, int(one.config["run"]["steps"]), element)
        elements.append(SweepElement(values, tuple(flags), run_dir, element, one.config, preempt_at))
    wandb = wandb_options(base.args).resolved(default_project=base.workload.name)
    wandb = dataclasses.replace(wandb, group=base.args.wandb_group or name)
    return Sweep(sweep_dir, name, tuple(axes), preset.workload, tuple(elements), wandb, base.launch)


def _sweep_resume(argv: list[str], route: _Route) -> SweepResume:
    """``--resume SWEEP_DIR``: every element parsed as ``--resume ELEMENT`` with these flags would be."""
    assert route.resume is not None
    sweep_dir = route.resume.resolve()
    record = read_record(sweep_dir)
    if record is None:
        raise ValueError(f"{sweep_dir / SWEEP_RECORD} is unreadable")
    elements = []
    for entry in record["elements"]:
        run_dir = sweep_dir / entry["dir"]
        elements.append(_resume(_single(argv, route, run_dir), run_dir, script=False))
    return SweepResume(sweep_dir, tuple(elements))
