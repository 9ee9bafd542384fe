"""State the loop keeps but did not register, found from the script's side and named with the fix.

Two kinds, both read from the calling script's frame (its local names, and the attributes of its
``self``) when ``run.restore(...)`` registers the state:

- objects with ``state_dict()``/``load_state_dict()`` that are not registered (a curriculum, an LR
  scheduler, an EMA class of the script's own), named at once;
- plain attributes (numbers, strings, booleans) of the script's own objects that are not registered (a
  curriculum's ``stage``, ``self.best_val_acc``): each checkpoint keeps their values, and a resumed process
  names those that differ as its loop starts (the resume lost them). Comparing, rather than naming every
  attribute that changes, leaves out what the script sets again from the step before its loop.

Modules, loaders and tensors are left out (a frozen teacher, a validation loader are not training state),
as is the dataset of a registered loader (its workers' copy is what the loader's state restores). Only
objects of the script's own classes are watched (not a library's: a progress bar, this package's session).
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import json
import sys
import sysconfig
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


_LIBRARY_DIRS = tuple(
    {str(sysconfig.get_paths()[key]) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
)


def _own_class(value: Any) -> bool:
    """Whether ``value``'s class is the script's own: not this package's, not the standard library's, not
    an installed distribution's (site-packages, or a ``pip install --target`` folder on the path), unless
    the distribution is the user's own editable install."""
    module_name = type(value).__module__
    top = module_name.split(".")[0]
    if top in ("trm_cluster", "builtins"):
        return False
    file = getattr(sys.modules.get(module_name), "__file__", None)
    if file is not None and str(file).startswith(_LIBRARY_DIRS):
        return False
    return top not in _installed_packages()


@functools.cache
def _installed_packages() -> frozenset[str]:
    """Top-level modules that an installed distribution provides, editable installs left out."""
    installed = set()
    for top, names in importlib.metadata.packages_distributions().items():
        if not all(_editable(name) for name in names):
            installed.add(top)
    return frozenset(installed)


def _editable(distribution: str) -> bool:
    try:
        direct_url = importlib.metadata.distribution(distribution).read_text("direct_url.json") or "{}"
        return bool(json.loads(direct_url).get("dir_info", {}).get("editable", False))
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False


def _watchable(name: str, value: Any) -> bool:
    """A plain public value, not a clock reading (a timer differs in every process by design)."""
    clock = "time" in name.lower() or "clock" in name.lower()
    return isinstance(value, _WATCHED_VALUES) and not name.startswith("_") and not clock


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


class WatchedAttributes:
    """The plain attributes of the script's own objects that are not registered: saved with each
    checkpoint, and compared with their values as the resumed loop starts. One that differs is state the
    resume lost (a curriculum's stage); one the script sets again from the step before the loop (or that
    only changes later) is not named."""

    def __init__(self, candidates: dict[str, Any], registered: Iterable[Any]) -> None:
        objects = list(registered)
        known = _registered_ids(objects) - {id(obj.owner) for obj in objects if isinstance(obj, Attributes)}
        kept = {(id(obj.owner), name) for obj in objects if isinstance(obj, Attributes) for name in obj.names}
        self._watched: dict[str, tuple[str, Any, str]] = {}
        """``{path: (label, owner, attribute)}``."""
        seen: set[int] = set()
        for label, value in candidates.items():
            if id(value) in known | seen or isinstance(value, _NOT_STATE) or _has_state(value):
                continue
            if not hasattr(value, "__dict__") or not _own_class(value):
                continue
            seen.add(id(value))
            for name, item in vars(value).items():
                if _watchable(name, item) and (id(value), name) not in kept:
                    self._watched[f"{label}.{name}"] = (label, value, name)

    def values(self) -> dict[str, Any]:
        """What a checkpoint keeps of them: ``{path: value}``."""
        values = {path: getattr(owner, name, None) for path, (_, owner, name) in self._watched.items()}
        return {path: value for path, value in values.items() if isinstance(value, _WATCHED_VALUES)}

    def lost(self, saved: dict[str, Any], step: int) -> list[str]:
        """A warning for each attribute whose value as the loop starts is not the one saved; an integer
        saved within one of the restored ``step`` is the loop's own step counter, which it sets from
        ``run.steps()`` once the loop runs."""
        warnings = []
        for path, (label, owner, name) in self._watched.items():
            if path not in saved or not hasattr(owner, name):
                continue
            now, then = getattr(owner, name), saved[path]
            if now is then or now == then:
                continue
            if isinstance(then, int) and not isinstance(then, bool) and abs(then - step) <= 1:
                continue
            warnings.append(
                f"run.restore(...): {path} ({type(owner).__name__}) was {then!r} when the checkpoint was saved "
                f"but is {now!r} as the loop starts: it is not registered, so this resumed process does not "
                f'continue from it; register it (run.restore(..., name=trm_cluster.attributes({label}, "{name}"))) '
                "or set it again before the loop"
            )
        return warnings
