"""A complete small training loop wrapped in the Trainer protocol (the example of docs/your-own-loop.md).

It has every piece a real loop has and that an exact resume must carry: model, optimizer, LR
schedule, EMA weights, an AMP grad scaler, a curriculum, and a DataLoader whose position is saved.
It trains a small MLP on a fixed synthetic regression set in milliseconds per step, which also makes
it the workload of the package's own fast tests (preset ``jobs/regression.toml``).

The trainer itself (torch) is ``workloads/regression_trainer.py``, imported when a trainer is built, in
the job's process: ``submit`` reads the config type from here and stays a light process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from trm_cluster.core.workload import TrainContext, Workload

if TYPE_CHECKING:
    from trm_cluster.workloads.regression_trainer import RegressionTrainer


@dataclass
class RegressionConfig:
    features: int = 16
    hidden: int = 32
    dataset_size: int = 1024
    batch_size: int = 32
    lr: float = 0.01
    warmup_steps: int = 20
    ema_decay: float = 0.99
    noise_by_stage: tuple[float, ...] = (0.5, 0.1)
    """Curriculum: label noise of each stage; the stage is ``step // stage_steps`` (last one sticks)."""
    stage_steps: int = 50
    num_workers: int = 0
    step_delay_s: float = 0.0
    """Sleep per step, to make a tiny run last long enough to rehearse signals against."""
    eval_delay_s: float = 0.0
    """Sleep per evaluation, to rehearse a kill during a slow final evaluation."""
    fail_at_step: int = -1
    """Raise at the start of this step (0-based), to rehearse a crash in the step; -1: never."""
    fail_once_marker: str = ""
    """With fail_at_step: fail only while this file does not exist (it is created on failing): once."""


def build(config: RegressionConfig, context: TrainContext) -> RegressionTrainer:
    from trm_cluster.workloads.regression_trainer import RegressionTrainer  # the job's process only

    return RegressionTrainer(config, context)


REGRESSION = Workload(name="regression", config_type=RegressionConfig, build=build)
