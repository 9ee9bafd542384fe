"""What the peptide-trm LR schedule does when a resume changes the run's total steps (--resume --steps 2N).

The trainer is rebuilt by every process from its config and the run's current total (TrainContext), so
the schedule follows ``decay_steps``: a fixed horizon stays, ``-1`` stretches the decay to the new end.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from trm_testing import small_config

from trm_cluster.core.workload import FollowsTotalSteps, TrainContext
from trm_cluster.workloads.trm import PEPTIDE_TRM
from trm_cluster.workloads.trm.trainer import PeptideTRMTrainer

N, WARMUP = 12, 3


def _trainer(tmp_path: Path, total: int, decay_steps: int) -> PeptideTRMTrainer:
    torch.manual_seed(0)
    config = small_config(warmup_steps=WARMUP, decay_steps=decay_steps, lr=1e-3, min_lr_ratio=0.1)
    trainer = PEPTIDE_TRM.build(config, TrainContext(seed=0, total_steps=total, run_dir=tmp_path))
    assert isinstance(trainer, PeptideTRMTrainer)
    return trainer


def _cosine(step: int, end: int) -> float:
    progress = min(1.0, (step - WARMUP) / (end - WARMUP))
    return 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@pytest.mark.parametrize(("decay_steps", "end_after_resume"), [(-1, 2 * N), (N - WARMUP, N)])
def test_resume_with_twice_the_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], decay_steps: int, end_after_resume: int
) -> None:
    first = _trainer(tmp_path, N, decay_steps)
    for step in range(N):
        first.train_step(step)
    assert first.last_lr == pytest.approx(_cosine(N - 1, N))  # the first run decays to its own end

    resumed = _trainer(tmp_path, 2 * N, decay_steps)  # what the next process builds after --resume --steps 2N
    resumed.load_state_dict(first.state_dict())
    assert isinstance(resumed, FollowsTotalSteps)
    resumed.total_steps_changed(N, 2 * N)
    told = capsys.readouterr().out
    assert f"total steps {N} -> {2 * N}" in told
    assert ("ends at step 24" in told) if decay_steps == -1 else (f"ends at step {N}" in told)
    lrs = [float(resumed.train_step(step)["lr"]) for step in range(N, 2 * N)]
    assert lrs == pytest.approx([_cosine(step, end_after_resume) for step in range(N, 2 * N)])
    if decay_steps == -1:
        assert lrs[0] > first.last_lr and lrs[-1] == pytest.approx(_cosine(2 * N - 1, 2 * N))
    else:
        assert lrs == pytest.approx([1e-4] * N)  # the horizon has passed: the floor, lr * min_lr_ratio


def test_decay_steps_below_minus_one_is_refused() -> None:
    with pytest.raises(ValueError, match="decay_steps must be >= -1"):
        small_config(decay_steps=-2).validate()
