"""A resumed optimizer's hyperparameters: the checkpoint's train on and a difference from what the script
built is named, without a false alarm from a running LR schedule; new_hyperparameters() keeps the
script's, its scheduler following. Checked from the user's side: the optimizer and scheduler objects."""

from __future__ import annotations

from typing import Any

import torch

import trm_cluster
from trm_cluster.state.registered import RegisteredState


def build(lr: float, weight_decay: float = 0.01) -> tuple[torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    for _ in range(3):
        model(torch.ones(2, 3)).sum().backward()
        optimizer.step()
        schedule.step()
    return optimizer, schedule


def saved(lr: float = 0.01, weight_decay: float = 0.01) -> dict[str, Any]:
    optimizer, schedule = build(lr, weight_decay)
    return RegisteredState({"optimizer": optimizer, "scheduler": schedule}).state_dict()


def restore(state: dict[str, Any], lr: float, weight_decay: float = 0.01, keep: bool = False) -> Any:
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    registered = RegisteredState(
        {
            "optimizer": trm_cluster.new_hyperparameters(optimizer) if keep else optimizer,
            "scheduler": schedule,
        }
    )
    registered.load_state_dict(state)
    return optimizer, schedule, registered.warnings


def test_the_same_hyperparameters_under_a_running_schedule_raise_no_warning() -> None:
    optimizer, _, warnings = restore(saved(), lr=0.01)
    assert warnings == []
    assert optimizer.param_groups[0]["lr"] < 0.01  # the schedule's restored rate, three steps in


def test_a_new_learning_rate_is_named_and_the_checkpoints_trains_on() -> None:
    expected, _ = build(0.01)
    optimizer, _, warnings = restore(saved(), lr=0.02, weight_decay=0.05)
    assert len(warnings) == 1
    assert "initial_lr 0.01 (checkpoint) vs 0.02" in warnings[0]
    assert "weight_decay 0.01 (checkpoint) vs 0.05" in warnings[0]
    assert "new_hyperparameters" in warnings[0]
    assert optimizer.param_groups[0]["lr"] == expected.param_groups[0]["lr"]


def test_new_hyperparameters_keeps_the_scripts_and_the_schedule_follows() -> None:
    old, old_schedule = build(0.01)
    optimizer, schedule, warnings = restore(saved(), lr=0.02, weight_decay=0.05, keep=True)
    group = optimizer.param_groups[0]
    assert warnings == []
    assert group["initial_lr"] == 0.02 and group["weight_decay"] == 0.05
    assert group["lr"] == 2 * old.param_groups[0]["lr"]  # the restored point of the schedule, new base
    assert schedule.base_lrs == [0.02] and old_schedule.base_lrs == [0.01]
    assert optimizer.state_dict()["state"][0]["step"] == 3  # the moments and counts are the checkpoint's
