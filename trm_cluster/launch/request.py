"""What ``submit`` was asked to do, as one typed, frozen value: parse.py builds it from argv, launcher.py
acts on it.

Why one value: every flag is read, and everything that can be checked before a write is checked, in one
place (parse.py); the launch then neither reads argv nor calls back into the command. A run of the
user's own script (``--script``/``--entry``) is a :class:`NewRun`, :class:`Resume` or :class:`Fork`
whose config holds the script's record (``config["script"]``) instead of a job config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.core.workload import SCRIPT_WORKLOAD
from trm_cluster.launch.fork import ForkPoint
from trm_cluster.scheduler.executors import ExecutorOptions


@dataclass(frozen=True)
class Launch:
    """How the job is submitted and followed: the same fields for every kind of request."""

    executor: ExecutorOptions
    kind: str
    """The executor resolved: slurm, local or debug."""
    record: Mapping[str, Any]
    """The manifest's launch record: the executor options, the executor, the preset, the cwd."""
    preemptions: int = 0
    """Rehearsal: real preemption signals the job sends itself (--preemptions)."""
    dry_run: bool = False
    wait: bool = False


@dataclass(frozen=True)
class NewRun:
    """A new run of a preset's workload, or of the user's script (``workload``: SCRIPT_WORKLOAD)."""

    run_dir: Path
    name: str
    workload: str
    config: dict[str, Any]
    wandb: WandbOptions
    """Resolved: the flags, the WANDB_* variables, else the workload's name (a script: its stem)."""
    launch: Launch

    @property
    def script(self) -> bool:
        return self.workload == SCRIPT_WORKLOAD


@dataclass(frozen=True)
class Resume:
    """Another submission of an existing run, its flags recorded as config changes."""

    run_dir: Path
    config: dict[str, Any]
    wandb: WandbOptions
    """As given: its group, tags, job type and notes replace the run's (WandbOptions.changes)."""
    must_resume: bool
    """--wandb-must-resume: W&B's resume="must" instead of "allow"."""
    script: bool
    launch: Launch


@dataclass(frozen=True)
class Fork:
    """A new run from another run's checkpoint at ``step`` (fork.py); the parent is only read."""

    point: ForkPoint
    step: int
    run_dir: Path
    name: str
    config: dict[str, Any]
    wandb: WandbOptions
    """Resolved: the flags, else the parent's; the group: the parent's name."""
    launch: Launch


@dataclass(frozen=True)
class Axis:
    """One ``--sweep KEY=V1,V2`` flag: a config field (as its flag, ``lr``, ``curriculum``) and its values."""

    key: str
    values: tuple[str, ...]

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


@dataclass(frozen=True)
class SweepElement:
    """One element of a new sweep: exactly the run a single submit with its flags would be."""

    values: Mapping[str, str]
    flags: tuple[str, ...]
    """The flags a single submit of it adds to the sweep's (``--lr 0.01``)."""
    run_dir: Path
    name: str
    config: dict[str, Any]
    preempt_at: tuple[int, ...]
    """Its rehearsal's preemption steps (--preemptions), checked before anything is written."""


@dataclass(frozen=True)
class Sweep:
    """``--sweep``: the cartesian product of config overrides, one run each, as one job array."""

    sweep_dir: Path
    name: str
    axes: tuple[Axis, ...]
    workload: str
    elements: tuple[SweepElement, ...]
    wandb: WandbOptions
    """Resolved, shared by every element; the group: the sweep's name unless --wandb-group."""
    launch: Launch


@dataclass(frozen=True)
class SweepResume:
    """``--resume SWEEP_DIR``: each element of the sweep as ``--resume ELEMENT`` with the same flags would
    be; the launch resumes the unfinished ones as one new array."""

    sweep_dir: Path
    elements: tuple[Resume, ...]


Request = NewRun | Resume | Fork | Sweep | SweepResume
