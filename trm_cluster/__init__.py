"""trm_cluster: preemptible, exactly-resumable training on Slurm through submitit.

The public face: implement :class:`Trainer` for your loop, describe it with a :class:`Workload`,
and submit it with ``python -m trm_cluster.submit`` (or :func:`trm_cluster.launch.submit`).
"""

from .config import RunConfig
from .workload import Evaluates, TrainContext, Trainer, Workload, load_workload

__all__ = ["Evaluates", "RunConfig", "TrainContext", "Trainer", "Workload", "load_workload"]
__version__ = "0.1.0"
