"""submit's flags: the tyro dataclass that defines them (and ``--help``), and the small steps that read
argv around it (the script's own arguments, name shorthands, the flags given explicitly).

parse.py runs these in order; nothing else reads submit's argv.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

import tyro

from trm_cluster.core.config import RunConfig
from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.scheduler.executors import ExecutorOptions

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
    """W&B project (default: $WANDB_PROJECT, else the workload's name; for a script, its name)."""
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
    """auto: WANDB_MODE where set, else online when an API key is configured, else offline."""
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


def wandb_options(args: SubmitArgs[Any]) -> WandbOptions:
    """The W&B flags as one unit, as given (None: not given); ``--no-wandb`` is the mode "disabled"."""
    return WandbOptions(
        project=args.wandb_project,
        entity=args.wandb_entity,
        mode=args.wandb_mode if args.wandb else "disabled",
        group=args.wandb_group,
        tags=args.wandb_tags,
        job_type=args.wandb_job_type,
        notes=args.wandb_notes,
    )


def previous_executor_options(resume: Path | None) -> ExecutorOptions:
    """On --resume, where and how the run ran last (partition, ranks, time limit...) are the defaults."""
    if resume is None:
        return ExecutorOptions()
    launch = RunManifest(resume).read().launch
    names = {f.name for f in dataclasses.fields(ExecutorOptions)} - {"allow_world_size_change"}  # asked anew
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in launch.items() if k in names
    }
    try:
        return ExecutorOptions(**values)
    except TypeError:
        return ExecutorOptions()


def split_script_args(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Cut ``argv`` at ``--script-args`` (or a bare ``--``): what follows belongs to the script."""
    for i, arg in enumerate(argv):
        if arg in ("--script-args", "--"):
            return argv[:i], argv[i + 1 :]
    return argv, None


def explicit_run_flags(argv: list[str], run: RunConfig) -> dict[str, Any]:
    """The RunConfig fields given as flags: for a script they override what it passes to session()."""
    given = {arg.partition("=")[0] for arg in argv if arg.startswith("--")}
    return {
        f.name: getattr(run, f.name)
        for f in dataclasses.fields(RunConfig)
        if f"--{f.name.replace('_', '-')}" in given
    }


def expand_name_shorthands(argv: list[str], config_type: type[Any]) -> list[str]:
    """``--curriculum delayed-spectrum`` for ``--curriculum.name delayed-spectrum``: any nested config
    dataclass with a ``name`` field can be picked by name with its own flag."""
    hints = typing.get_type_hints(config_type)
    named = {
        f"--{name.replace('_', '-')}"
        for name, hint in hints.items()
        if dataclasses.is_dataclass(hint) and any(g.name == "name" for g in dataclasses.fields(hint))
    }
    return [f"{arg}.name" if arg in named else arg for arg in argv]
