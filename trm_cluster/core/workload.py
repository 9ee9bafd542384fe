"""The one doorway between orchestration and a training loop.

The job drives a :class:`Trainer` one step at a time and owns everything around it: signals, the
manifest, checkpoint files, RNG capture, W&B. A workload only says how to build its trainer from its
own config dataclass; it never sees Slurm, submitit or the run directory's layout.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from trm_cluster.core.moved import current_reference

ConfigT = TypeVar("ConfigT")


@runtime_checkable
class Trainer(Protocol):
    """A training loop cut at step boundaries.

    Contract:
    - ``train_step(step)`` performs global step ``step`` (0-based: the number of steps already done)
      and returns scalar metrics. The job calls it with 0, 1, 2, ... and never skips or repeats one
      within a process.
    - ``state_dict()`` returns everything an exact continuation needs that is not RNG state (the job
      captures python/numpy/torch/CUDA RNG itself): model weights under ``"model"``, optimizer, LR
      schedule, grad scaler, EMA, carried activations, curriculum state... Only tensors, numbers,
      strings, None and lists/tuples/dicts of those: checkpoints are loaded with ``weights_only=True``.
    - ``load_state_dict(state)`` restores it into a freshly built trainer.
    """

    def train_step(self, step: int) -> Mapping[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@runtime_checkable
class Evaluates(Protocol):
    """Optional: a trainer that can report evaluation metrics (logged under ``eval/``)."""

    def evaluate(self, step: int) -> Mapping[str, float]: ...


@dataclass(frozen=True)
class TrainContext:
    """What a workload may know about the run it trains in, given to its ``build`` function."""

    seed: int
    """The run's seed; python, numpy and torch are seeded with it just before ``build`` is called."""
    total_steps: int
    """The run's total steps as of this process: after ``--resume --steps N`` it is the new N (a
    trainer whose LR schedule depends on it may also implement ``total_steps_changed(old, new)``)."""
    run_dir: Path
    """The run directory (manifest.json, checkpoints/, logs/, wandb/); write your own files elsewhere."""
    rank: int = 0
    """This process's global rank (0 on a single process)."""
    world_size: int = 1
    """How many processes train the run."""
    log_every: int = 1
    """One W&B row is written every ``log_every`` steps (and at the last one); see :meth:`will_log`."""

    def will_log(self, step: int) -> bool:
        """Whether the metrics that ``train_step(step)`` returns reach W&B as their own row (the values
        of the other steps of a window are reduced into it): compute expensive diagnostics only then."""
        done = step + 1
        return done % self.log_every == 0 or done == self.total_steps


@runtime_checkable
class FollowsTotalSteps(Protocol):
    """Optional: told when a resume changed the run's total steps, after ``load_state_dict``."""

    def total_steps_changed(self, old: int, new: int) -> None: ...


@dataclass(frozen=True)
class Workload(Generic[ConfigT]):
    """A named way to build a trainer from a config dataclass.

    ``config_type`` must be a dataclass whose fields are plain values or nested dataclasses, so it
    round-trips through JSON (the manifest) and TOML (the presets) and becomes CLI flags (tyro).
    """

    name: str
    config_type: type[ConfigT]
    build: Callable[[ConfigT, TrainContext], Trainer]

    def config_from_dict(self, values: Mapping[str, Any]) -> ConfigT:
        return dataclass_from_dict(self.config_type, values)


SCRIPT_WORKLOAD = "trm_cluster.scheduler.script_job:SCRIPT"
"""The workload reference of a run of a user's own script (run by the script job, not a Trainer)."""


def is_script_workload(reference: str) -> bool:
    return current_reference(reference) == SCRIPT_WORKLOAD


def load_workload(reference: str) -> Workload[Any]:
    """Resolve ``"package.module:ATTRIBUTE"`` to a :class:`Workload`."""
    module_name, sep, attribute = current_reference(reference).partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"workload reference {reference!r} is not of the form 'package.module:NAME'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"workload module {module_name!r} cannot be imported: {error}") from error
    workload = getattr(module, attribute, None)
    if not isinstance(workload, Workload):
        raise ValueError(f"{reference!r} is not a trm_cluster.Workload")
    return workload


def dataclass_from_dict(cls: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
    """Build a (possibly nested) dataclass from a mapping, refusing unknown keys by name."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown field(s) for {cls.__name__}: {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    hints = _resolved_hints(cls)
    for name, value in values.items():
        field_type = hints.get(name)
        if (
            isinstance(field_type, type)
            and dataclasses.is_dataclass(field_type)
            and isinstance(value, Mapping)
        ):
            kwargs[name] = dataclass_from_dict(field_type, value)
        elif isinstance(value, (list, tuple)) and _is_tuple_type(field_type):
            item_type = _tuple_item_type(field_type)
            kwargs[name] = tuple(
                dataclass_from_dict(item_type, item) if isinstance(item, Mapping) and item_type else item
                for item in value
            )
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _resolved_hints(cls: type[Any]) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(cls)
    except Exception:
        return {}


def _is_tuple_type(field_type: Any) -> bool:
    import typing

    return field_type is tuple or typing.get_origin(field_type) is tuple


def _tuple_item_type(field_type: Any) -> Any:
    """The dataclass held by ``tuple[Item, ...]``, else None."""
    import typing

    args = typing.get_args(field_type)
    if args and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None
