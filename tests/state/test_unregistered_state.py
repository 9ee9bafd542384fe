"""run.restore(...) names the script's objects that hold training state but are not registered (a
curriculum, a scheduler, a scaler, an EMA of its own), in its locals or on its ``self``; not a frozen
module or a validation loader."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

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


class PlainTrainer:
    """pepTRM's shape: the stage and the best score are plain attributes of the trainer itself."""

    def __init__(self) -> None:
        self.model = torch.nn.Linear(2, 2)
        self.current_stage_idx, self.best_val_acc, self.run_name = 0, 0.0, "peptides"

    def train(self, register_best: bool) -> RegisteredState:
        kept = {"best": attributes(self, "best_val_acc")} if register_best else {}
        state = RegisteredState({"model": self.model, **kept})
        self.current_stage_idx, self.best_val_acc = 1, 0.5  # the loop moves on
        state.state_dict()  # the save
        return state


def test_plain_attributes_that_change_during_training_unregistered_are_named_at_the_save(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="trm_cluster"):
        state = PlainTrainer().train(register_best=False)
    assert "self.current_stage_idx (PlainTrainer) changed during training (0 -> 1)" in caplog.text
    assert "self.best_val_acc (PlainTrainer) changed during training (0.0 -> 0.5)" in caplog.text
    assert "run_name" not in caplog.text  # unchanged: not named
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trm_cluster"):
        state.state_dict()  # named once, not at every save
        PlainTrainer().train(register_best=True)
    assert caplog.text.count("changed during training") == 1 and "best_val_acc" not in caplog.text
