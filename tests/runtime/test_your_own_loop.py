"""docs/your-own-loop.md shows the example loop in full, and that loop resumes exactly."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from support import REPO

from trm_cluster.core.rng import capture_rng, restore_rng, seed_everything
from trm_cluster.core.workload import TrainContext, Trainer
from trm_cluster.workloads.regression import REGRESSION, RegressionConfig


def test_the_doc_shows_the_example_script_verbatim() -> None:
    doc = (REPO / "docs" / "your-own-loop.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert (REPO / "examples" / "train_script.py").read_text() in blocks


def _build(tmp_path: Path) -> Trainer:
    seed_everything(7)
    return REGRESSION.build(RegressionConfig(), TrainContext(seed=7, total_steps=120, run_dir=tmp_path))


def test_example_resumes_bit_exactly_across_a_save_and_load(tmp_path: Path) -> None:
    straight = _build(tmp_path)
    for step in range(120):
        straight.train_step(step)

    first = _build(tmp_path)
    for step in range(77):  # stop mid-epoch and mid-curriculum-stage
        first.train_step(step)
    torch.save({"trainer": first.state_dict(), "rng": capture_rng()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    second = _build(tmp_path)
    second.load_state_dict(saved["trainer"])
    restore_rng(saved["rng"])
    for step in range(77, 120):
        second.train_step(step)

    for name, tensor in straight.state_dict()["model"].items():
        assert torch.equal(tensor, second.state_dict()["model"][name]), name
    for name, tensor in straight.state_dict()["ema"].items():
        assert torch.equal(tensor, second.state_dict()["ema"][name]), name
