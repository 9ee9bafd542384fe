"""A complete small training loop wrapped in the Trainer protocol (the example of docs/your-own-loop.md).

It has every piece a real loop has and that an exact resume must carry: model, optimizer, LR schedule, EMA
weights, an AMP grad scaler, a curriculum, and a DataLoader whose position is saved. It trains a small MLP
on a fixed synthetic regression set in milliseconds per step, which also makes it the workload of the
package's own fast tests (preset ``jobs/regression.toml``, workload ``trm_cluster.workloads.regression:
REGRESSION``). Its config is ``config.py``, the trainer ``trainer.py`` (the only module here with torch),
the workload ``workload.py``.
"""

from trm_cluster.workloads.regression.config import RegressionConfig
from trm_cluster.workloads.regression.workload import REGRESSION

__all__ = ["REGRESSION", "RegressionConfig"]
