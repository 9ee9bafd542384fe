"""restore_rng puts back every stream the training draws from: python's random, numpy's and torch's."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from trm_cluster.core.rng import capture_rng, restore_rng, seed_everything
from trm_cluster.rundir.checkpoints import capture


def draws() -> dict[str, list[float]]:
    return {
        "python": [random.random(), random.gauss(0, 1), random.gauss(0, 1)],
        "numpy": [*np.random.random(2).tolist(), float(np.random.standard_normal())],
        "torch": torch.rand(3).tolist(),
    }


def test_a_restored_state_replays_all_three_streams() -> None:
    seed_everything(7)
    random.gauss(0, 1)  # python and numpy now each hold a cached second normal deviate
    np.random.standard_normal()
    buffer = io.BytesIO()
    torch.save(capture(capture_rng()), buffer)  # as a checkpoint holds it
    first = draws()
    buffer.seek(0)
    restore_rng(torch.load(buffer, weights_only=True))
    again = draws()
    for stream in ("python", "numpy", "torch"):
        assert again[stream] == first[stream], stream
