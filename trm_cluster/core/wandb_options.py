"""What a run tells W&B besides its metrics: the options chosen at creation and kept for every process,
the run id chosen once, and the mode (online only where an API key is configured)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class WandbOptions:
    """What ``wandb.init`` gets besides the id; chosen when the run is created, kept for every process."""

    project: str = "peptide-trm"
    entity: str | None = None
    mode: str = "auto"
    """auto (online when an API key is configured, else offline), online, offline, disabled."""
    group: str | None = None
    tags: tuple[str, ...] = ()
    job_type: str | None = None
    notes: str | None = None

    @classmethod
    def resolve(
        cls,
        default_project: str,
        mode: str = "auto",
        project: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        tags: tuple[str, ...] | None = None,
        job_type: str | None = None,
        notes: str | None = None,
    ) -> WandbOptions:
        """Flags first, then the WANDB_* variables W&B itself honours, read here once (a requeued process
        on a compute node may not see the submitting shell's environment)."""
        env = os.environ
        env_tags = tuple(t for t in env.get("WANDB_TAGS", "").split(",") if t.strip())
        return cls(
            project=project or env.get("WANDB_PROJECT") or default_project,
            entity=entity or env.get("WANDB_ENTITY") or None,
            mode=mode,
            group=group or env.get("WANDB_RUN_GROUP") or None,
            tags=tuple(tags) if tags is not None else tuple(t.strip() for t in env_tags),
            job_type=job_type or env.get("WANDB_JOB_TYPE") or None,
            notes=notes or env.get("WANDB_NOTES") or None,
        )


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


def resolve_mode(requested: str) -> str:
    if requested == "auto":
        return "online" if api_key_configured() else "offline"
    if requested not in ("online", "offline", "disabled"):
        raise ValueError(f"unknown W&B mode {requested!r} (auto, online, offline, disabled)")
    return requested
