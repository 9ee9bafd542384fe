"""The peptide-trm workload as the orchestration core sees it: a name, a config type, a builder."""

from __future__ import annotations

from trm_cluster.trm.config import TRMConfig
from trm_cluster.trm.trainer import build_trainer
from trm_cluster.workload import Workload

PEPTIDE_TRM: Workload[TRMConfig] = Workload(name="peptide-trm", config_type=TRMConfig, build=build_trainer)
