"""The peptide-trm workload as the orchestration core sees it: a name, a config type, a builder."""

from __future__ import annotations

from trm_cluster.core.workload import Workload
from trm_cluster.workloads.trm.config import TRMConfig
from trm_cluster.workloads.trm.trainer import build_trainer

PEPTIDE_TRM: Workload[TRMConfig] = Workload(name="peptide-trm", config_type=TRMConfig, build=build_trainer)
