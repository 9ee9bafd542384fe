"""trm_cluster: preemptible, exactly-resumable training on Slurm through submitit.

Two doorways into one requeue path:

- your own loop: ``with trm_cluster.session() as run:`` around it (docs/your-own-loop.md), run with
  ``python -m trm_cluster.submit --script train.py``;
- the :class:`Trainer` protocol, described by a :class:`Workload` and named in a preset.
"""

from .config import RunConfig
from .session import Session, UsageError, session
from .signals import ignore_stop_signals
from .workload import Evaluates, FollowsTotalSteps, TrainContext, Trainer, Workload, load_workload

__all__ = [
    "Evaluates",
    "FollowsTotalSteps",
    "RunConfig",
    "Session",
    "TrainContext",
    "Trainer",
    "UsageError",
    "Workload",
    "ignore_stop_signals",
    "load_workload",
    "session",
]
__version__ = "0.1.0"
