"""The peptide-trm workload as the orchestration core sees it: a name, a config type, a builder.

The trainer (torch, the model) is imported when a trainer is built, in the job's process: ``submit``
reads the config type from here and stays a light process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trm_cluster.core.workload import TrainContext, Workload
from trm_cluster.workloads.trm.config import TRMConfig

if TYPE_CHECKING:
    from trm_cluster.workloads.trm.trainer import PeptideTRMTrainer


def build_trainer(config: TRMConfig, context: TrainContext) -> PeptideTRMTrainer:
    from trm_cluster.workloads.trm.trainer import build_trainer as build  # the job's process only

    return build(config, context)


PEPTIDE_TRM: Workload[TRMConfig] = Workload(name="peptide-trm", config_type=TRMConfig, build=build_trainer)
