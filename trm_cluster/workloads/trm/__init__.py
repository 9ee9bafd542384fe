"""peptide-trm: a Tiny Recursive Model for de novo peptide sequencing (the training workload)."""

from trm_cluster.workloads.trm.config import TRMConfig
from trm_cluster.workloads.trm.curriculum import CURRICULA, CurriculumConfig
from trm_cluster.workloads.trm.workload import PEPTIDE_TRM

__all__ = ["CURRICULA", "PEPTIDE_TRM", "CurriculumConfig", "TRMConfig"]
