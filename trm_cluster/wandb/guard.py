"""One W&B run per training run: while a session is open, a script's own ``wandb.init`` is refused, its
``wandb.log`` calls go to ``run.log`` and its ``wandb.finish`` is ignored (with a warning).

Why: a script that keeps its ``wandb.init`` logs every process to a new W&B run of its own, while the
run's id in the manifest (resumed by every process) gets nothing, and nothing says so. Its ``wandb.log``
calls, routed through the session, follow the session's step rules and journal (a ``step=`` they pass
is not used): no row twice, none shifted, whatever the stops. The session's own tracker calls
:func:`wandb_init` and logs through its run object, which reach the real ones.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

from trm_cluster.core.errors import UsageError

logger = logging.getLogger(__name__)

ORIGINAL = "trm_cluster_original"
"""The attribute of a replaced wandb function that holds the real one."""
_routed: Callable[..., None] | None = None
"""The script's ``wandb.log`` while a session has taken it over."""
FIX = (
    "this script calls wandb.init itself; the session starts the run's one W&B run (its id is in the "
    "manifest, resumed by every process): remove the wandb.init call (the script's wandb.log calls reach "
    "that run through the session) and give its options to submit (--wandb-project, --wandb-tags, ...)"
)


FINISH_IGNORED = (
    "wandb.finish() inside the session is ignored: the session finishes the run's one W&B run when this "
    "process's segment ends (marked preempted on a stop); remove the call"
)
"""Finished by the script, the one run would take no rows for the rest of the segment, and the script's
next ``wandb.log`` would raise (seen when adopting the peptide-TRM code)."""


def foreign_run_message() -> str | None:
    """Why the session cannot start: a W&B run the script started before it, or None."""
    wandb = sys.modules.get("wandb")
    return FIX if wandb is not None and getattr(wandb, "run", None) is not None else None


def take_over_script_calls(log: Callable[[Mapping[str, Any]], None]) -> None:
    """From here on, the script's ``wandb.init`` raises :class:`UsageError` and its ``wandb.log`` is
    ``log`` (the session's ``run.log``). Only where wandb is imported already: a script importing it later,
    inside the loop, is not covered."""
    wandb = sys.modules.get("wandb")
    if wandb is None or hasattr(wandb.init, ORIGINAL):
        return

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise UsageError(FIX)

    def routed(data: Mapping[str, Any], step: Any = None, commit: Any = None, sync: Any = None) -> None:
        log(data)

    def left_to_the_session(*args: Any, **kwargs: Any) -> None:
        logger.warning(FINISH_IGNORED)

    global _routed
    for name, replacement in (("init", refused), ("log", routed), ("finish", left_to_the_session)):
        setattr(replacement, ORIGINAL, getattr(wandb, name))
        setattr(wandb, name, replacement)
    _routed = routed


def release_script_calls() -> None:
    """``wandb.init`` and ``wandb.log`` as they were before the session."""
    global _routed
    _routed = None
    wandb = sys.modules.get("wandb")
    for name in ("init", "log", "finish"):
        original = getattr(getattr(wandb, name, None), ORIGINAL, None)
        if original is not None:
            setattr(wandb, name, original)


def wandb_init(**arguments: Any) -> Any:
    """The real ``wandb.init``, guarded or not: the session's own run."""
    import wandb

    init: Callable[..., Any] = getattr(wandb.init, ORIGINAL, wandb.init)
    run = init(**arguments)
    if _routed is not None:  # wandb.init binds wandb.log to the new run's: route the script's calls again
        wandb.log = _routed
    return run
