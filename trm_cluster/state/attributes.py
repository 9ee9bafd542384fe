"""Plain attributes of an object registered as state: ``trm_cluster.attributes(curriculum, "stage")``.

A loop's small counters often live on an object of its own that has no ``state_dict()``: a curriculum's
stage, the best validation score so far, an early-stopping patience. Writing ``state_dict`` and
``load_state_dict`` for them is boilerplate; naming the attributes is enough. The values are copied at
the save and set back on the same object at the resume, so the loop reads them where it always did.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


class Attributes:
    """The named attributes of ``owner`` as a state source (``state_dict``/``load_state_dict``)."""

    def __init__(self, owner: object, names: tuple[str, ...]) -> None:
        if not names:
            raise TypeError("trm_cluster.attributes(obj, *names): name at least one attribute")
        missing = [name for name in names if not hasattr(owner, name)]
        if missing:
            raise TypeError(
                f"trm_cluster.attributes(...): a {type(owner).__name__} has no attribute "
                f"{', '.join(repr(name) for name in missing)}"
            )
        self.owner, self.names = owner, names

    def state_dict(self) -> dict[str, Any]:
        # a copy: a list the loop keeps appending to must not change the state already taken
        return {name: copy.deepcopy(getattr(self.owner, name)) for name in self.names}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in self.names:
            setattr(self.owner, name, copy.deepcopy(state[name]))


def attributes(owner: object, *names: str) -> Attributes:
    """Register attributes of ``owner`` as state: ``run.restore(..., curriculum=trm_cluster.attributes(
    curriculum, "stage"))``. Each value must be one a checkpoint can hold (numbers, strings, tensors,
    and lists or dicts of them)."""
    return Attributes(owner, names)
