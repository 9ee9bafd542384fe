"""``submit --fork RUN_DIR[@STEP]``: a new run that starts from another run's checkpoint.

Why beside ``--resume``: a resume continues the SAME run (same W&B run, same directory); a fork branches
(try a curriculum from step 15000, compare two continuations in W&B) and must leave the parent as it was.
The child gets its own directory, run uid and W&B run id; its first checkpoint is the parent's at STEP,
re-owned by the child (the loader refuses a file of another run), so the child resumes it exactly as the
parent would have. Every check runs, and the parent's checkpoint is read and verified, before anything
is written. Reading, re-owning and publishing that checkpoint is ``launch/fork_state.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.rundir.manifest import ManifestData, ManifestError, RunManifest
from trm_cluster.runtime.grace import advice_from_history


@dataclass(frozen=True)
class ForkPoint:
    """Where a fork starts: a run directory and a step (None: its newest checkpoint)."""

    run_dir: Path
    step: int | None = None

    @classmethod
    def parse(cls, text: str | Path) -> ForkPoint:
        """``runs/a`` or ``runs/a@1500`` (a directory name holding ``@`` is kept whole unless a step follows)."""
        raw = str(text)
        head, at, tail = raw.rpartition("@")
        if at and tail.isdigit() and head:
            return cls(Path(head), int(tail))
        if at and head and not Path(raw).exists():
            raise ValueError(f"--fork {raw}: the step after '@' must be a non-negative integer")
        return cls(Path(raw))


def checkpoint_steps(parent: ManifestData, run_dir: Path) -> list[int]:
    """Steps of the parent whose checkpoint file is still on disk (retention deletes older ones)."""
    return [c.step for c in parent.checkpoints if (run_dir / c.file).is_file()]


def fork_step(point: ForkPoint) -> int:
    """The step the fork starts from; refused, with the steps that have a checkpoint, when it has none."""
    parent_dir = point.run_dir.resolve()
    steps = checkpoint_steps(RunManifest(parent_dir).read(), parent_dir)
    if not steps:
        raise ManifestError(f"{parent_dir} has no checkpoint to fork from")
    step = steps[-1] if point.step is None else point.step
    if step not in steps:
        listed = ", ".join(map(str, steps))
        raise ManifestError(f"{parent_dir} has no checkpoint at step {step}; steps with one: {listed}")
    return step


def fork_wandb(parent: ManifestData, given: WandbOptions) -> WandbOptions:
    """The child's W&B settings: what is given, else the parent's (project, entity, mode, tags, job
    type, notes); the group is the parent's name unless given (W&B then shows the family together)."""
    return given.over(dataclasses.replace(parent.wandb.options(), group=parent.name))


def fork_advice(parent: ManifestData, wandb_mode: str, signal_delay_s: float) -> str | None:
    """``submit --fork``'s grace-window advice, from the parent's measured history (grace.py): the fork
    trains the parent's workload from the parent's state, so the parent's slowest step and save are the
    best guess of what the fork's stop needs. None: it fits, or the parent measured nothing."""
    advice = advice_from_history(parent.segments, wandb_mode, signal_delay_s)
    return None if advice is None else f"warning: from the parent run's measured history: {advice}"
