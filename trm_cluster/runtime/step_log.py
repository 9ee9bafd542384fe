"""What a session writes to W&B and the job's log at step boundaries: rows of the ``log_every``
window, progress (steps/s, eta), and the rows logged outside the window.

Why its own object: the session decides when a step ends; this decides what a step's row holds and
at which W&B step it lands (``wandb_step``), so the session's loop reads without the row arithmetic.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from trm_cluster.core.formatting import clock
from trm_cluster.runtime.log_window import LogWindow, as_number
from trm_cluster.wandb.tracker import NullTracker, Tracker


class StepLog:
    """Rows to the tracker (W&B or its null stand-in), progress lines to stdout unless ``quiet``."""

    def __init__(
        self, log_reduce: str, log_every: int, wandb_step: str, total_steps: int, quiet: bool
    ) -> None:
        self.window = LogWindow(log_reduce)
        self.tracker: Tracker = NullTracker()
        """Set once W&B is started (after the restore); rows before that are a misuse (the session's)."""
        self.log_every, self.wandb_step, self.total_steps, self.quiet = (
            log_every,
            wandb_step,
            total_steps,
            quiet,
        )
        self._since = (time.time(), 0)

    def loop_started(self, step: int) -> None:
        self._since = (time.time(), step)

    def will_log(self, done: int) -> bool:
        """Whether the step that ends at ``done`` writes a row."""
        return done % self.log_every == 0 or done == self.total_steps

    def row_now(self, done: int, metrics: Mapping[str, Any]) -> None:
        """A row at ``done`` steps, outside the window (an eval before, inside or after the loop)."""
        row = {key: as_number(key, value) for key, value in metrics.items()}
        self.tracker.log(max(self._row_step(done), 0), row)

    def step_done(self, done: int) -> None:
        """The window's row, if this step ends a window, and the progress line."""
        if not self.will_log(done):
            return
        row = self.window.flush()
        progress = self._progress(done)
        if row:
            self.tracker.log(self._row_step(done), {**row, **progress})
        if not self.quiet:
            speed = progress["trainer/steps_per_s"]
            eta = f" eta {clock((self.total_steps - done) / speed)}" if speed > 0 else ""
            print(
                f"[trm_cluster] step {done}/{self.total_steps} {_format(row)} | {speed:.3g} steps/s{eta}",
                flush=True,
            )

    def tracking_state(self) -> dict[str, Any]:
        """What a checkpoint carries for W&B: the journal of rows and the open log window."""
        return {"journal": self.tracker.journal(), "window": self.window.state_dict()}

    def _row_step(self, done: int) -> int:
        return done if self.wandb_step == "done" else done - 1

    def _progress(self, done: int) -> dict[str, float]:
        started, started_step = self._since
        elapsed = max(time.time() - started, 1e-9)
        return {"trainer/step": float(done), "trainer/steps_per_s": (done - started_step) / elapsed}


def _format(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={float(v):.4g}" for k, v in list(metrics.items())[:8])
