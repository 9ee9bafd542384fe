"""trm_cluster: preemptible, exactly-resumable training on Slurm through submitit.

Two doorways into one requeue path:

- your own loop: ``with trm_cluster.session() as run:`` around it (docs/your-own-loop.md), run with
  ``python -m trm_cluster.submit --script train.py``;
- the :class:`Trainer` protocol, described by a :class:`Workload` and named in a preset.

The names below are imported on first use, so a light command (``status``) or a process that only
imports a submodule does not pay for torch and the rest.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from trm_cluster.core.moved import honour_moved_modules

if TYPE_CHECKING:
    from trm_cluster.core.config import RunConfig
    from trm_cluster.core.errors import UsageError
    from trm_cluster.core.signals import ignore_stop_signals
    from trm_cluster.core.workload import (
        Evaluates,
        FollowsTotalSteps,
        TrainContext,
        Trainer,
        Workload,
        load_workload,
    )
    from trm_cluster.runtime.session import Session, session
    from trm_cluster.state.attributes import attributes
    from trm_cluster.state.hyperparameters import new_hyperparameters
    from trm_cluster.state.registered import per_rank

_EXPORTS = {
    "RunConfig": "core.config",
    "Session": "runtime.session",
    "UsageError": "core.errors",
    "session": "runtime.session",
    "ignore_stop_signals": "core.signals",
    "per_rank": "state.registered",
    "attributes": "state.attributes",
    "new_hyperparameters": "state.hyperparameters",
    "Evaluates": "core.workload",
    "FollowsTotalSteps": "core.workload",
    "TrainContext": "core.workload",
    "Trainer": "core.workload",
    "Workload": "core.workload",
    "load_workload": "core.workload",
}
__all__ = [
    "Evaluates",
    "FollowsTotalSteps",
    "RunConfig",
    "Session",
    "TrainContext",
    "Trainer",
    "UsageError",
    "Workload",
    "attributes",
    "ignore_stop_signals",
    "load_workload",
    "new_hyperparameters",
    "per_rank",
    "session",
]
__version__ = "0.1.0"

honour_moved_modules()  # a job pickled before an upgrade names its class by the old module path

if "SUBMITIT_FOLDER" in os.environ:  # a submitit job importing its modules: a stop signal must not kill it
    from trm_cluster.core.signals import defer_at_startup

    defer_at_startup()


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trm_cluster' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
