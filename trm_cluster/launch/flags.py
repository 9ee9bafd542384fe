"""How submit's flags become config: the flags given, the script's own arguments, name shorthands.

Kept apart from the command (submit.py) so that the command stays thin.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from trm_cluster.core.config import RunConfig
from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.scheduler.executors import ExecutorOptions


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
