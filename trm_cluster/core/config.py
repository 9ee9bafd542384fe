"""The run's own settings (not the workload's): length, seed, checkpoint and logging cadence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class RunConfig:
    """How a run's loop is driven. Part of the resolved config stored in the manifest."""

    steps: int = 1000
    """Total optimizer steps of the run."""
    seed: int = 0
    """Seeds python, numpy and torch before the trainer is built (Trainer protocol only: your own
    loop seeds itself)."""
    checkpoint_every: int = 200
    """Save every N steps (0: only when stopping and at the end)."""
    sync_checkpoints: bool = False
    """Write periodic checkpoints on the training thread. By default (one rank) they are copied at the
    step boundary and written in the background; the save at a stop and at the end is always
    synchronous, and so is every save of a multi-rank run."""
    keep_checkpoints: int = 3
    """Keep the newest K checkpoint files; older ones are deleted once a newer one is durable."""
    log_every: int = 10
    """Write one W&B row every N steps (and at the last step); the values logged in between are
    reduced by ``log_reduce``."""
    log_reduce: Literal["last", "mean"] = "last"
    """How a log_every window becomes one row, per key: its last value, or the mean of its values."""
    wandb_step: Literal["done", "index"] = "done"
    """The W&B step of a row: the number of steps done (1 after the first step), or the 0-based index
    of the step that logged it (for charts continued from loops that logged that way)."""
    eval_every: int = 0
    """Run the trainer's evaluate() every N steps (0: only at the end). Trainer protocol only."""
    deterministic: bool = False
    """Deterministic kernels (torch.use_deterministic_algorithms, cuDNN deterministic, a fixed cuBLAS
    workspace): what a bit-exact resume needs on CUDA; costs speed there (docs/distributed.md)."""

    stop_grace_s: float | None = None
    """After a stop request, the seconds the loop has to reach a step boundary; past them every thread's
    stack is logged and the process leaves at once, requeued from the last checkpoint (runtime/watchdog.py).
    Default: half of ``--signal-delay-s`` (at least 10 s) under Slurm or the local executor, else off."""
    step_timeout_s: float | str | None = None
    """A step or a save (the restore: at least 300 s) that takes longer than this many seconds is a hang: stacks
    logged, the process retried from the last checkpoint (``--max-failures`` hangs at one step in a row:
    failed). "auto": max(600 s, 20x the slowest step or save so far, after 3 steps). Default: off."""

    def validate(self) -> None:
        if self.stop_grace_s is not None and not self.stop_grace_s > 0:
            raise ValueError(f"stop_grace_s must be a positive number of seconds, got {self.stop_grace_s}")
        if self.step_timeout_s is not None and self.step_timeout_s != "auto":
            try:
                timeout = float(self.step_timeout_s)
            except (TypeError, ValueError):
                raise ValueError(
                    f"step_timeout_s must be a positive number of seconds or 'auto', got {self.step_timeout_s!r}"
                ) from None
            if not timeout > 0:
                raise ValueError(
                    f"step_timeout_s must be a positive number of seconds, got {self.step_timeout_s}"
                )
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        for name in ("checkpoint_every", "log_every", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.log_every == 0:
            raise ValueError("log_every must be >= 1")
        if self.log_reduce not in ("last", "mean"):
            raise ValueError(f"log_reduce must be 'last' or 'mean', got {self.log_reduce!r}")
        if self.wandb_step not in ("done", "index"):
            raise ValueError(f"wandb_step must be 'done' or 'index', got {self.wandb_step!r}")
