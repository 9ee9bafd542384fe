"""One W&B run per training run: while a session is open, a script's own ``wandb.init`` is refused.

Why: a script that keeps its ``wandb.init`` logs every process to a new W&B run of its own, while the
run's id in the manifest (resumed by every process) gets nothing, and nothing says so. The session's
own tracker calls :func:`wandb_init`, which reaches the real one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from trm_cluster.core.errors import UsageError

FIX = (
    "this script calls wandb.init itself; the session starts the run's one W&B run (its id is in the "
    "manifest, resumed by every process): remove the wandb.init call, log with run.log(...), and give "
    "its options to submit (--wandb-project, --wandb-tags, ...)"
)


def foreign_run_message() -> str | None:
    """Why the session cannot start: a W&B run the script started before it, or None."""
    wandb = sys.modules.get("wandb")
    return FIX if wandb is not None and getattr(wandb, "run", None) is not None else None


def refuse_foreign_init() -> None:
    """From here on, ``wandb.init`` from the script raises :class:`UsageError` (wandb imported already;
    a script importing it later, inside the loop, is not guarded)."""
    wandb = sys.modules.get("wandb")
    if wandb is None or hasattr(wandb.init, "trm_cluster_original"):
        return
    original = wandb.init

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise UsageError(FIX)

    refused.trm_cluster_original = original  # type: ignore[attr-defined]
    setattr(wandb, "init", refused)  # noqa: B010  # the module, patched while a session is open


def allow_foreign_init() -> None:
    wandb = sys.modules.get("wandb")
    original = getattr(wandb.init, "trm_cluster_original", None) if wandb is not None else None
    if original is not None:
        setattr(wandb, "init", original)  # noqa: B010


def wandb_init(**arguments: Any) -> Any:
    """The real ``wandb.init``, guarded or not: the session's own run."""
    import wandb

    init: Callable[..., Any] = getattr(wandb.init, "trm_cluster_original", wandb.init)
    return init(**arguments)
