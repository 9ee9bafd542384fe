"""An in-process resume through torch.save / torch.load(weights_only=True) is bit for bit exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from support import assert_same_state
from trm_testing import build, small_config

from trm_cluster.core.workload import Evaluates, Trainer
from trm_cluster.workloads.trm.trainer import PeptideTRMTrainer

SEED = 3
TOTAL = 14
SAVE_AT = 6


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}", item, out)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _flat(f"{prefix}.{index}", item, out)
    else:
        out[prefix] = value
    return out


def _run(trainer: PeptideTRMTrainer, start: int, stop: int) -> None:
    for step in range(start, stop):
        trainer.train_step(step)


def test_exact_resume(tmp_path: Path) -> None:
    # horizon 10: stage boundaries at steps 2 and 5 and the spectrum loss on from step 2,
    # n_sup 4: rows halt and are replaced several times in the run.
    config = small_config("default", horizon=10)
    reference = build(config, seed=SEED)
    assert isinstance(reference, Trainer)
    assert isinstance(reference, Evaluates)
    _run(reference, 0, TOTAL)

    first = build(config, seed=SEED)
    _run(first, 0, SAVE_AT)
    rng = torch.get_rng_state()  # what the core captures at the save point
    path = tmp_path / "state.pt"
    torch.save(first.state_dict(), path)
    del first

    torch.manual_seed(12345)  # disturb the global RNG; the core re-seeds before building
    resumed = build(config, seed=SEED)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    torch.set_rng_state(rng)
    _run(resumed, SAVE_AT, TOTAL)

    expected = reference.state_dict()
    assert {"model", "ema", "optimizer", "carry", "curriculum"} <= expected.keys()
    assert_same_state(expected, resumed.state_dict(), ignore=())
    assert int(reference.carry.steps.max()) <= config.n_sup
    assert torch.equal(reference.carry.y, resumed.carry.y)
    assert torch.equal(reference.carry.z, resumed.carry.z)
    assert reference.evaluate(TOTAL) == resumed.evaluate(TOTAL)


def test_state_has_only_plain_types() -> None:
    trainer = build(small_config("default"))
    trainer.train_step(0)
    state = trainer.state_dict()
    allowed = (torch.Tensor, int, float, str, bool, type(None))
    for key, value in _flat("state", state, {}).items():
        assert isinstance(value, allowed), (key, type(value))
    assert set(state) >= {"model", "ema", "optimizer", "schedule", "carry", "curriculum", "step"}
    assert set(state["carry"]) == {"y", "z", "steps", "halted", "data"}
    assert all(isinstance(v, torch.Tensor) for v in state["model"].values())


def test_bf16_autocast_path_runs() -> None:
    """The CUDA bf16 path, exercised with CPU autocast: the carry and the logits stay float32."""
    trainer = build(small_config("default", horizon=10))
    trainer.autocast = True
    for step in range(3):
        metrics = trainer.train_step(step)
    assert trainer.carry.y.dtype == torch.float32
    assert metrics["loss"] == metrics["loss"]  # not NaN
    assert set(trainer.evaluate(3)) == {"aa_precision", "aa_recall", "peptide_recall"}
