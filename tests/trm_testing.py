"""Small, fast configurations shared by the peptide-trm tests (tests/workloads/trm/; imported by them)."""

from __future__ import annotations

from pathlib import Path

import torch

from trm_cluster.core.workload import TrainContext
from trm_cluster.workloads.trm import PEPTIDE_TRM, CurriculumConfig, TRMConfig
from trm_cluster.workloads.trm.trainer import PeptideTRMTrainer

MGF = Path("/work/shared/data/casanovo-sample-spectra.mgf")
if not MGF.is_file():  # the checkout's sibling shared/ folder
    MGF = Path(__file__).resolve().parents[2] / "shared" / "data" / "casanovo-sample-spectra.mgf"


def small_config(curriculum: str = "default", horizon: int = 20, **overrides: object) -> TRMConfig:
    """A model small enough that a few dozen steps take a second or two."""
    values: dict[str, object] = {
        "hidden": 32,
        "heads": 2,
        "n_sup": 4,
        "batch_size": 16,
        "max_length": 9,
        "max_peaks": 48,
        "warmup_steps": 3,
        "eval_size": 32,
        "device": "cpu",
        "bf16": False,
    }
    values.update(overrides)
    config = TRMConfig(**values)  # type: ignore[arg-type]
    config.curriculum = CurriculumConfig(name=curriculum, horizon=horizon)
    return config


def build(config: TRMConfig, seed: int = 0, tmp: Path = Path(".")) -> PeptideTRMTrainer:
    """Seed the global RNG as the core does, then build through the Workload."""
    torch.manual_seed(seed)
    trainer = PEPTIDE_TRM.build(config, TrainContext(seed=seed, total_steps=100, run_dir=tmp))
    assert isinstance(trainer, PeptideTRMTrainer)
    return trainer
