"""One W&B row per ``log_every`` steps: the values a loop logs in between are reduced, not dropped.

A diagnostic logged only at some steps of a window still reaches the row; ``mean`` averages each key
over the calls that logged it. The window is part of the checkpoint, so a run stopped mid-window
writes the same row after its resume as an uninterrupted run.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import torch


def as_number(key: str, value: Any) -> float:
    """A logged value as a float: numbers, bools and one-element tensors; anything else is refused."""
    if type(value) is float or type(value) is int:  # the common case, without the ABC check's cost
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().item())
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(
        f"run.log({key!r}=...): got a {type(value).__name__}; log numbers (use run.wandb for media)"
    )


class LogWindow:
    def __init__(self, reduce: str = "last") -> None:
        if reduce not in ("last", "mean"):
            raise ValueError(f"unknown log reduction {reduce!r} (last, mean)")
        self.reduce = reduce
        self._sum: dict[str, float] = {}
        self._count: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def add(self, metrics: Mapping[str, Any]) -> None:
        for key, value in metrics.items():
            number = as_number(key, value)
            self._last[key] = number
            self._sum[key] = self._sum.get(key, 0.0) + number
            self._count[key] = self._count.get(key, 0) + 1

    def flush(self) -> dict[str, float]:
        """The window's row, and an empty window."""
        if self.reduce == "mean":
            row = {key: total / self._count[key] for key, total in self._sum.items()}
        else:
            row = dict(self._last)
        self._sum, self._count, self._last = {}, {}, {}
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"sum": dict(self._sum), "count": dict(self._count), "last": dict(self._last)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._sum = {str(k): float(v) for k, v in state.get("sum", {}).items()}
        self._count = {str(k): int(v) for k, v in state.get("count", {}).items()}
        self._last = {str(k): float(v) for k, v in state.get("last", {}).items()}
