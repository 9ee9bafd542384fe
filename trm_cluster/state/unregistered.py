"""State the loop keeps but did not register, found from the script's side and named with the fix.

Two kinds, both read from the calling script's frame (its local names, and the attributes of its
``self``) when ``run.restore(...)`` registers the state:

- objects with ``state_dict()``/``load_state_dict()`` that are not registered (a curriculum, an LR
  scheduler, an EMA class of the script's own), named at once;
- plain attributes (numbers, strings, booleans) of the script's own objects that change during training
  and are not registered (a curriculum's ``stage``, ``self.best_val_acc``), named at the first save after
  they changed: a resumed process would start them from their initial value.

Modules, loaders and tensors are left out (a frozen teacher, a validation loader are not training state),
as is the dataset of a registered loader (its workers' copy is what the loader's state restores).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterable
from typing import Any

import torch

from trm_cluster.state.attributes import Attributes

_WATCHED_VALUES = (int, float, bool, str)
_NOT_STATE = (
    torch.nn.Module, torch.utils.data.DataLoader, torch.Tensor, types.ModuleType, types.FunctionType,
    types.MethodType, type,
)  # fmt: skip


def script_objects() -> dict[str, Any]:
    """The calling script's local names and its ``self``'s attributes (``self.name``), by label."""
    frame = inspect.currentframe()
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("trm_cluster"):
        frame = frame.f_back
    if frame is None:
        return {}
    candidates = dict(frame.f_locals)
    owner = candidates.get("self")
    if owner is not None and hasattr(owner, "__dict__"):
        candidates.update({f"self.{name}": value for name, value in vars(owner).items()})
    return {name: value for name, value in candidates.items() if not name.startswith("_")}


def _registered_ids(registered: Iterable[Any]) -> set[int]:
    objects = list(registered)
    known = {id(obj) for obj in objects}
    known |= {id(obj.dataset) for obj in objects if isinstance(obj, torch.utils.data.DataLoader)}
    known |= {id(obj.owner) for obj in objects if isinstance(obj, Attributes)}
    return known


def _has_state(value: Any) -> bool:
    return callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None))


def unregistered_stateful(candidates: dict[str, Any], registered: Iterable[Any]) -> list[str]:
    """The candidates with ``state_dict()``/``load_state_dict()`` that are not registered."""
    known = _registered_ids(registered)
    return [
        f"{name} ({type(value).__name__})"
        for name, value in candidates.items()
        if id(value) not in known and not isinstance(value, _NOT_STATE) and _has_state(value)
    ]


def unregistered_warning(names: list[str]) -> str:
    return (
        f"run.restore(...): {', '.join(names)} {'has' if len(names) == 1 else 'have'} state_dict() but "
        f"{'is' if len(names) == 1 else 'are'} not registered: not saved, so a resumed process starts "
        "it afresh; register it (run.restore(..., name=obj)) unless it never changes during training"
    )


class ChangingAttributes:
    """The plain attributes of the script's own objects as registered, to name those that change."""

    def __init__(self, candidates: dict[str, Any], registered: Iterable[Any]) -> None:
        objects = list(registered)
        known = _registered_ids(objects) - {id(obj.owner) for obj in objects if isinstance(obj, Attributes)}
        kept = {(id(obj.owner), name) for obj in objects if isinstance(obj, Attributes) for name in obj.names}
        self._watched: list[tuple[str, Any, dict[str, Any]]] = []
        seen: set[int] = set()
        for label, value in candidates.items():
            if id(value) in known | seen or isinstance(value, _NOT_STATE) or _has_state(value):
                continue
            if not hasattr(value, "__dict__") or "." in label:  # self's attributes: watched through self
                continue
            seen.add(id(value))
            plain = {
                name: item
                for name, item in vars(value).items()
                if isinstance(item, _WATCHED_VALUES)
                and not name.startswith("_")
                and (id(value), name) not in kept
            }
            if plain:
                self._watched.append((label, value, plain))
        self._named: set[str] = set()

    def newly_changed(self) -> list[str]:
        """Warnings for the attributes that changed since registration and were not named before."""
        warnings = []
        for label, owner, before in self._watched:
            for name, old in before.items():
                new = getattr(owner, name, old)
                path = f"{label}.{name}"
                if path in self._named or new is old or new == old:
                    continue
                self._named.add(path)
                warnings.append(
                    f"run.restore(...): {path} ({type(owner).__name__}) changed during training ({old!r} -> "
                    f"{new!r}) but is not registered: a resumed process starts it at {old!r}; register it "
                    f'(run.restore(..., name=trm_cluster.attributes({label}, "{name}"))) unless the loop '
                    "sets it from the step"
                )
        return warnings
