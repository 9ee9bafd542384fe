"""The regression example's settings: the fields of its preset (``jobs/regression.toml``) and of ``submit``."""

from __future__ import annotations

from dataclasses import dataclass


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
