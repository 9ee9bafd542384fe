"""The run's own settings (not the workload's): length, seed, checkpoint and logging cadence."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunConfig:
    """How the job drives a trainer. Part of the resolved config stored in the manifest."""

    steps: int = 1000
    """Total optimizer steps of the run."""
    seed: int = 0
    """Seeds python, numpy and torch before the trainer is built."""
    checkpoint_every: int = 200
    """Save every N steps (0: only when stopping and at the end)."""
    keep_checkpoints: int = 3
    """Keep the newest K checkpoint files; older ones are deleted once a newer one is durable."""
    log_every: int = 10
    """Log training metrics to W&B every N steps."""
    eval_every: int = 0
    """Run the trainer's evaluate() every N steps (0: only at the end)."""

    def validate(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        for name in ("checkpoint_every", "log_every", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.log_every == 0:
            raise ValueError("log_every must be >= 1")
