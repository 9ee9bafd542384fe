"""run.restore(...) names the script's objects that hold training state but are not registered (a
curriculum, a scheduler, a scaler, an EMA of its own), in its locals or on its ``self``; not a frozen
module or a validation loader."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import pytest
import torch
from support import round_trip

from trm_cluster.state.attributes import attributes
from trm_cluster.state.registered import RegisteredState


class Curriculum:
    def __init__(self) -> None:
        self.stage = 0

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage = state["stage"]


def test_a_local_curriculum_not_registered_is_named_and_registered_ones_are_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = torch.nn.Linear(2, 2)
    teacher = torch.nn.Linear(2, 2)  # frozen, not training state: not named
    validation = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 2)))
    curriculum = Curriculum()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING, logger="trm_cluster"):
        RegisteredState({"model": model, "optimizer": optimizer})
    assert "curriculum (Curriculum) has state_dict() but is not registered" in caplog.text
    assert (
        "teacher" not in caplog.text and "validation" not in caplog.text and "optimizer (" not in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trm_cluster"):
        RegisteredState({"model": model, "optimizer": optimizer, "curriculum": curriculum})
    assert "not registered" not in caplog.text
    del teacher, validation


class Trainer:
    """Their monolithic trainer: the state lives on ``self``, the loop in one method."""

    def __init__(self) -> None:
        self.model = torch.nn.Linear(2, 2)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1)
        self.curriculum = Curriculum()

    def train(self) -> None:
        RegisteredState({"model": self.model, "optimizer": self.optimizer, "curriculum": self.curriculum})


def test_state_on_the_scripts_self_is_named_too(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="trm_cluster"):
        Trainer().train()
    assert "self.scheduler (StepLR) has state_dict() but is not registered" in caplog.text
    assert "self.curriculum" not in caplog.text


class Stages:
    def __init__(self) -> None:
        self.current_stage_idx = 0


class PlainTrainer:
    """pepTRM's shape: the best score a plain attribute of the trainer, the stage one of its curriculum."""

    def __init__(self) -> None:
        self.model = torch.nn.Linear(2, 2)
        self.curriculum = Stages()
        self.best_val_acc, self.run_name, self.last_log_time = 0.0, "peptides", time.time()
        self.global_step = 0
        self.bar = argparse.Namespace(n=0)  # a library's object (a progress bar): not training state

    def registered(self, keep_best: bool) -> RegisteredState:
        return RegisteredState(
            {"model": self.model, **({"best": attributes(self, "best_val_acc")} if keep_best else {})}
        )

    def trained(self, keep_best: bool = False) -> dict[str, Any]:
        state = self.registered(keep_best)
        self.curriculum.current_stage_idx, self.best_val_acc, self.bar.n = 2, 0.5, 9  # the loop moved on
        self.global_step = 41  # its own step counter (for self.global_step in run.steps(), then += 1)
        self.last_log_time += 1.0
        return round_trip(state.state_dict())  # the save


def test_unregistered_plain_attributes_the_resume_lost_are_named_as_the_loop_starts() -> None:
    saved = PlainTrainer().trained()
    resumed = PlainTrainer()
    state = resumed.registered(keep_best=False)
    state.load_state_dict(saved)
    lost = sorted(state.loop_started(step=40))
    assert lost[0].startswith(
        "run.restore(...): self.best_val_acc (PlainTrainer) was 0.5 when the checkpoint was saved but is 0.0 "
        "as the loop starts: it is not registered"
    )
    assert (
        "self.curriculum.current_stage_idx (Stages) was 2 " in lost[1] and len(lost) == 2
    )  # no timer, no bar


def test_attributes_registered_or_set_again_from_the_step_are_not_named() -> None:
    saved = PlainTrainer().trained(keep_best=True)
    resumed = PlainTrainer()
    state = resumed.registered(keep_best=True)
    state.load_state_dict(saved)
    resumed.curriculum.current_stage_idx = 2  # the script derives the stage from the step before its loop
    assert state.loop_started(step=40) == [] and resumed.best_val_acc == 0.5
