"""The public API is what ``trm_cluster`` exports and the commands (docs/architecture.md): every exported
name resolves, the names user scripts rely on are there, and every command answers ``--help``."""

from __future__ import annotations

import importlib

import pytest
from support import answer_of

import trm_cluster

RELIED_ON = {"session", "Session", "Trainer", "Workload", "RunConfig", "per_rank", "ignore_stop_signals",
             "UsageError", "new_hyperparameters", "attributes"}  # fmt: skip
COMMANDS = ("submit", "status", "preempt", "sync", "doctor.cli", "chaos.driver")


def test_every_exported_name_resolves_and_the_relied_on_ones_are_exported() -> None:
    assert set(trm_cluster.__all__) >= RELIED_ON
    for name in trm_cluster.__all__:
        assert getattr(trm_cluster, name) is not None, name


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help(command: str) -> None:
    main = importlib.import_module(f"trm_cluster.{command}").main
    code, err = answer_of(main, ["--help"])
    assert code == 0, err
