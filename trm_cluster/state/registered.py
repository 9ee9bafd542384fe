"""The state a loop registers with ``run.restore(name=obj, ...)``: what it is, how it is saved, what is refused.

Accepted: anything with ``state_dict()``/``load_state_dict()`` (modules, optimizers, LR schedulers,
grad scalers, EMA wrappers, torchdata's ``StatefulDataLoader``), a ``torch.Generator``, a dict
(restored in place), a tensor (copied into in place) and named attributes of an object
(:func:`~trm_cluster.state.attributes.attributes`). ``None`` registers nothing (an optional scheduler). A plain ``DataLoader`` has no state: it is
accepted with a warning that says why it cannot resume exactly and what to use instead.
Everything saved must load with ``torch.load(weights_only=True)``; :func:`check_loadable` says where
it would not, at the save, not at the resume.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from trm_cluster.state.hyperparameters import (
    NewHyperparameters,
    differences,
    hyperparameters,
    is_optimizer,
    keep_built,
    warning,
)
from trm_cluster.state.loader_state import is_stateful_loader, loader_state, quiet_workers, restore_loader
from trm_cluster.state.sharded import ShardedState
from trm_cluster.state.unregistered import (
    WatchedAttributes,
    script_objects,
    unregistered_stateful,
    unregistered_warning,
)

log = logging.getLogger(__name__)

WATCHED = "trm_cluster.watched"
"""The key of the unregistered attributes' values in the saved state (:class:`WatchedAttributes`)."""

_PLAIN = (int, float, bool, str, bytes, complex, type(None), torch.dtype, torch.device, torch.Size)


class StateSource(Protocol):
    """What a save captures and a resume loads: the registered objects, or a Trainer protocol's trainer."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class StateError(TypeError):
    """An object that cannot be saved or restored, named with the fix."""


def plain_dataloader_warning(name: str, loader: Any) -> str | None:
    """Why a plain DataLoader cannot resume exactly, or None for a loader with its own state."""
    if not isinstance(loader, torch.utils.data.DataLoader) or hasattr(loader, "load_state_dict"):
        return None
    workers = loader.num_workers
    why = (
        f"its {workers} worker processes draw their own seeds and prefetch batches, which no checkpoint sees"
        if workers > 0
        else "its position in the epoch is not saved"
    )
    return (
        f"run.restore({name}=...): a plain torch DataLoader cannot resume exactly: {why}. A resumed run "
        "starts a new pass over the data. Use torchdata.stateful_dataloader.StatefulDataLoader (same "
        "arguments, saves its position and its workers' RNG), or make each batch a function of the step."
    )


@dataclass(frozen=True)
class PerRank:
    """An object whose state differs between ranks (a data position): see :func:`per_rank`."""

    obj: Any


def per_rank(obj: Any) -> PerRank:
    """Mark a registered object as per-rank: ``run.restore(model=m, data=trm_cluster.per_rank(loader))``.
    Each rank saves its own state of it; unmarked objects are the same on every rank and saved once."""
    return PerRank(obj)


class RegisteredState:
    """The named objects of one loop, saved and restored as one dict ``{name: state}``; the per-rank
    ones (:func:`per_rank`) as a second dict that every rank saves for itself."""

    def __init__(self, objects: Mapping[str, Any]) -> None:
        for name in [name for name, obj in objects.items() if obj is None]:
            log.info("run.restore(%s=None): nothing registered under %r", name, name)
        objects = {name: obj for name, obj in objects.items() if obj is not None}
        self.keep_hyperparameters = {n for n, o in objects.items() if isinstance(o, NewHyperparameters)}
        objects = {n: o.obj if isinstance(o, NewHyperparameters) else o for n, o in objects.items()}
        self.sharded = ShardedState(objects)
        """An FSDP2 model and its optimizer: saved by every rank through DCP (state/sharded.py)."""
        objects = {n: o for n, o in objects.items() if n not in self.sharded.names}
        self.objects = {name: obj for name, obj in objects.items() if not isinstance(obj, PerRank)}
        self.per_rank = {name: obj.obj for name, obj in objects.items() if isinstance(obj, PerRank)}
        self.unsaved: list[str] = []
        self.warnings: list[str] = []
        """What the last load changed that the script may not expect (hyperparameters.py)."""
        for name, obj in {**self.objects, **self.per_rank}.items():
            if isinstance(obj, torch.utils.data.DataLoader):
                quiet_workers(obj)
            warning = plain_dataloader_warning(name, obj)
            if warning is not None:
                log.warning("%s", warning)
                self.unsaved.append(name)
            elif not _supported(obj):
                raise StateError(
                    f"run.restore({name}=...): a {type(obj).__name__} has no state_dict()/load_state_dict(); "
                    "register an object with both, a dict (restored in place), a tensor, a torch.Generator, or "
                    f'its plain attributes: {name}=trm_cluster.attributes(obj, "attribute", ...)'
                )
        sharded = [*self.sharded.modules.values(), *(opt for opt, _ in self.sharded.optimizers.values())]
        candidates, registered = script_objects(), [*self.objects.values(), *self.per_rank.values(), *sharded]
        self.watched = WatchedAttributes(candidates, registered)
        self._saved_watched: dict[str, Any] = {}
        unregistered = unregistered_stateful(candidates, registered)
        if unregistered:
            log.warning("%s", unregistered_warning(unregistered))
        # Refuse what a checkpoint could not hold now, not at the first save. Not a DataLoader's state:
        # a StatefulDataLoader with workers starts them to answer state_dict(), and the iterator the
        # loop then makes can wait forever on those workers (seen with torchdata 0.11).
        for name, obj in {**self.objects, **self.per_rank}.items():
            if name not in self.unsaved and not isinstance(obj, torch.utils.data.DataLoader):
                check_loadable(_state_of(obj), name)

    def state_dict(self) -> dict[str, Any]:
        watched = self.watched.values()
        return {**self._states(self.objects), **({WATCHED: watched} if watched else {})}

    def rank_state_dict(self) -> dict[str, Any]:
        return self._states(self.per_rank)

    def _states(self, objects: Mapping[str, Any]) -> dict[str, Any]:
        state = {name: _state_of(obj) for name, obj in objects.items() if name not in self.unsaved}
        for name, value in state.items():
            check_loadable(value, name)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._saved_watched = dict(state.get(WATCHED, {}))
        self._load(self.objects, {name: value for name, value in state.items() if name != WATCHED})

    def loop_started(self, step: int) -> list[str]:
        """What a resumed loop (at ``step``) starts without: unregistered attributes that differ from
        their saved values."""
        return self.watched.lost(self._saved_watched, step)

    def load_sharded(self, directory: Path, process_group: Any = None) -> None:
        """The sharded objects from a step's DCP directory, their optimizers' hyperparameters checked
        against the script's as for replicated ones (kept with :func:`new_hyperparameters`)."""
        built = {name: hyperparameters(opt) for name, (opt, _) in self.sharded.optimizers.items()}
        self.sharded.load(directory, process_group)
        self._check_hyperparameters(built, {name: opt for name, (opt, _) in self.sharded.optimizers.items()})

    def load_rank_state_dict(self, state: Mapping[str, Any]) -> None:
        self._load(self.per_rank, state)

    def _load(self, objects: Mapping[str, Any], state: Mapping[str, Any]) -> None:
        expected = [name for name in objects if name not in self.unsaved]
        missing = [name for name in expected if name not in state]
        if missing:
            raise StateError(
                f"the checkpoint holds no state for {', '.join(missing)} (registered now, not when it was "
                "saved); register the same objects as the run that saved it"
            )
        extra = sorted(
            k for k in set(state) - set(expected) if not (isinstance(state[k], dict) and not state[k])
        )
        if extra:
            log.warning("the checkpoint holds state for %s, which this loop does not register; ignored",
                        ", ".join(extra))  # fmt: skip
        built = {name: hyperparameters(objects[name]) for name in expected if is_optimizer(objects[name])}
        for name in expected:
            _load_into(objects[name], state[name], name)
        self._check_hyperparameters(built, objects)

    def _check_hyperparameters(self, built: Mapping[str, Any], optimizers: Mapping[str, Any]) -> None:
        """Warn about each restored hyperparameter that differs from the script's, or put the script's back."""
        changed: list[str] = []
        for name, mine in built.items():
            if name in self.keep_hyperparameters:
                keep_built(optimizers[name], mine, [*self.objects.values(), *self.per_rank.values()])
            else:
                changed += differences(name, mine, hyperparameters(optimizers[name]))
        if changed:
            self.warnings.append(warning(changed))


def _supported(obj: Any) -> bool:
    has_state = callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))
    return has_state or isinstance(obj, torch.Generator | dict | torch.Tensor)


def _state_of(obj: Any) -> Any:
    if is_stateful_loader(obj):
        return loader_state(obj)
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, dict):
        return dict(obj)
    return obj.state_dict()


def _load_into(obj: Any, state: Any, name: str) -> None:
    if is_stateful_loader(obj):
        restore_loader(obj, state)
    elif isinstance(obj, torch.Generator):
        obj.set_state(state)
    elif isinstance(obj, torch.Tensor):
        with torch.no_grad():
            obj.copy_(state)
    elif isinstance(obj, dict):
        obj.clear()
        obj.update(state)
    else:
        obj.load_state_dict(state)


def check_loadable(value: Any, path: str) -> None:
    """Raise if ``value`` holds something a ``weights_only`` load refuses (numpy arrays, objects...)."""
    if isinstance(value, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(value, dict | OrderedDict):
        for key, item in value.items():
            if not isinstance(key, _PLAIN):
                raise StateError(
                    f"state {path!r} has a key of type {type(key).__name__}; use str or int keys"
                )
            check_loadable(item, path + "." + str(key))
        return
    if isinstance(value, list | tuple | set):
        for i, item in enumerate(value):
            check_loadable(item, f"{path}[{i}]")
        return
    raise StateError(
        f"state {path!r} holds a {type(value).__module__}.{type(value).__name__}, which a checkpoint cannot "
        "hold (it is loaded with weights_only=True); convert it to a tensor, a number, a string or a list"
    )
