"""The regression example as the orchestration core sees it: a name, a config type, a builder.

The trainer (torch) is imported when a trainer is built, in the job's process: ``submit`` reads the config
type from here and stays a light process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trm_cluster.core.workload import TrainContext, Workload
from trm_cluster.workloads.regression.config import RegressionConfig

if TYPE_CHECKING:
    from trm_cluster.workloads.regression.trainer import RegressionTrainer


def build(config: RegressionConfig, context: TrainContext) -> RegressionTrainer:
    from trm_cluster.workloads.regression.trainer import RegressionTrainer  # the job's process only

    return RegressionTrainer(config, context)


REGRESSION = Workload(name="regression", config_type=RegressionConfig, build=build)
