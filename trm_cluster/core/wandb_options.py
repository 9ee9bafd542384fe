"""What a run tells W&B besides its metrics: the options chosen at creation and kept for every process,
the run id chosen once, and the mode (online only where an API key is configured)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any

NO_PROJECT = "uncategorized"
"""The W&B project of a run created with none chosen (W&B's own name for such runs). Only callers that
name no workload's project do that: tests, the doctor's probes, the benchmarks; submit always gives one
(the workload's name, or the script's stem), and so does :func:`create_script_run` (the stem)."""


@dataclass(frozen=True)
class WandbOptions:
    """What ``wandb.init`` gets besides the id; chosen when the run is created, kept for every process.

    One unit from the command line to the manifest: as given, a field left out is None (the mode
    "auto"); :meth:`resolved` fills it from the WANDB_* variables and the run's own default project (its
    workload's name, or a script's stem), :meth:`over` from another run's (a fork's parent)."""

    project: str | None = None
    """None: not chosen. No default here: the workload's name or the script's stem is the default, given
    by submit (launch/parse.py); a run created with none records :data:`NO_PROJECT`."""
    entity: str | None = None
    mode: str = "auto"
    """auto (WANDB_MODE where set, else online when an API key is configured, else offline), online,
    offline, disabled."""
    group: str | None = None
    tags: tuple[str, ...] | None = None
    """None: not given (a given empty list clears them)."""
    job_type: str | None = None
    notes: str | None = None

    def over(self, base: WandbOptions) -> WandbOptions:
        """These options, each one left out (None, an empty string, mode auto) taken from ``base``."""
        return WandbOptions(
            project=self.project or base.project,
            entity=self.entity or base.entity,
            mode=base.mode if self.mode == "auto" else self.mode,
            group=self.group or base.group,
            tags=base.tags if self.tags is None else tuple(self.tags),
            job_type=self.job_type or base.job_type,
            notes=self.notes or base.notes,
        )

    def resolved(self, default_project: str) -> WandbOptions:
        """Flags first, then the WANDB_* variables W&B itself honours, read here once (a requeued process
        on a compute node may not see the submitting shell's environment), then ``default_project``."""
        env = os.environ
        env_tags = tuple(t.strip() for t in env.get("WANDB_TAGS", "").split(",") if t.strip())
        from_env = WandbOptions(
            project=env.get("WANDB_PROJECT") or default_project,
            entity=env.get("WANDB_ENTITY") or None,
            group=env.get("WANDB_RUN_GROUP") or None,
            tags=env_tags,
            job_type=env.get("WANDB_JOB_TYPE") or None,
            notes=env.get("WANDB_NOTES") or None,
        )
        return self.over(from_env)

    def changes(self) -> dict[str, Any]:
        """What a ``--resume`` given these options changes in the run: the group, tags, job type and notes
        given again (the project, entity and mode stay the run's)."""
        given = {"group": self.group, "tags": self.tags, "job_type": self.job_type, "notes": self.notes}
        return {key: value for key, value in given.items() if value is not None}


def new_run_id() -> str:
    """A W&B-compatible run id: 8 lowercase base-36 characters, like wandb's own."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


def api_key_configured() -> bool:
    """Whether W&B could log online: a key in the environment or in ~/.netrc (never read or copied)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


ENV_MODES = {"online": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
"""W&B's own ``WANDB_MODE`` values, as a run's mode."""


def resolve_mode(requested: str) -> str:
    """The run's mode, chosen once at its creation. "auto": W&B's own ``WANDB_MODE`` where it is set, else
    online only where an API key is configured (never a prompt), else offline."""
    if requested == "auto":
        from_env = ENV_MODES.get(os.environ.get("WANDB_MODE", "").strip().lower())
        return from_env or ("online" if api_key_configured() else "offline")
    if requested not in ("online", "offline", "disabled"):
        raise ValueError(f"unknown W&B mode {requested!r} (auto, online, offline, disabled)")
    return requested
