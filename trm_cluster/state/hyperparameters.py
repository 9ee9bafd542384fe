"""A resumed optimizer trains on with the checkpoint's hyperparameters, whatever the script just built:
``load_state_dict`` replaces its param groups. A ``--resume`` with a new learning rate would change
nothing, silently; so a difference is named (the log, the segment's warning in ``status``), and a
script that means it registers ``trm_cluster.new_hyperparameters(optimizer)`` to train on with its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

IMPLEMENTATION = {"params", "foreach", "fused", "capturable", "differentiable"}
"""Param-group keys that are not hyperparameters."""
SCHEDULED = {"lr": "initial_lr", "betas": "base_momentum", "momentum": "base_momentum"}
"""A key an LR scheduler moves at every step -> the key that holds its base (compared instead)."""


@dataclass(frozen=True)
class NewHyperparameters:
    """An optimizer whose state is restored but whose hyperparameters stay the script's own."""

    obj: Any


def new_hyperparameters(optimizer: Any) -> NewHyperparameters:
    """Register an optimizer so that its state (moments, step counts) is restored and the hyperparameters
    the script built it with (learning rate, weight decay, betas, ...) train on: ``run.restore(
    optimizer=trm_cluster.new_hyperparameters(optimizer))``. Its LR schedulers' base rates follow."""
    return NewHyperparameters(optimizer)


def is_optimizer(obj: Any) -> bool:
    groups = getattr(obj, "param_groups", None)
    return isinstance(groups, list) and all(isinstance(g, dict) for g in groups)


def hyperparameters(optimizer: Any) -> list[dict[str, Any]]:
    """Each param group's hyperparameters, a scheduled one by its base."""
    chosen = []
    for group in optimizer.param_groups:
        keys = set(group) - IMPLEMENTATION
        keys -= {key for key, base in SCHEDULED.items() if base in group}
        chosen.append({key: _plain(group[key]) for key in sorted(keys)})
    return chosen


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()  # a tensor learning rate
    return list(value) if isinstance(value, tuple) else value


def differences(name: str, built: list[dict[str, Any]], restored: list[dict[str, Any]]) -> list[str]:
    """``name group i: key checkpoint's -> script's`` for every hyperparameter that differs."""
    if len(built) != len(restored):
        return [f"{name}: the checkpoint has {len(restored)} param groups, the script built {len(built)}"]
    lines = []
    for index, (mine, saved) in enumerate(zip(built, restored, strict=True)):
        for key in sorted(set(mine) | set(saved)):
            if mine.get(key) != saved.get(key):
                lines.append(
                    f"{name} group {index}: {key} {saved.get(key)!r} (checkpoint) vs {mine.get(key)!r}"
                )
    return lines


def warning(lines: list[str]) -> str:
    return (
        "the restored optimizer trains on with the checkpoint's hyperparameters, not the ones the script "
        f"built: {'; '.join(lines)}. To train with the script's, register "
        "trm_cluster.new_hyperparameters(optimizer)"
    )


def keep_built(optimizer: Any, built: list[dict[str, Any]], objects: Iterable[Any]) -> None:
    """Put the script's hyperparameters back after the load; schedulers of this optimizer take the new
    base rates (``base_lrs``), so their schedule follows them."""
    for group, mine in zip(optimizer.param_groups, built, strict=True):
        if "initial_lr" in mine and group.get("initial_lr"):  # the restored schedule, on the new base
            group["lr"] = group["lr"] * (mine["initial_lr"] / group["initial_lr"])
        for key, value in mine.items():
            group[key] = tuple(value) if isinstance(group.get(key), tuple) else value
    bases = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    for obj in objects:
        if getattr(obj, "optimizer", None) is optimizer and isinstance(getattr(obj, "base_lrs", None), list):
            obj.base_lrs = list(bases)
