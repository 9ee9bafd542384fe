"""Retries without crash loops: a step that raised is tried again from the last checkpoint, a bounded
number of times.

An exception inside the loop (a transient I/O error, a CUDA error, a flaky data source) closes the
segment as ``failed`` with the step it happened at (segments.fail_segment). The process owner then asks
:func:`after_failure`: the same step failing ``max_failures`` times in a row, within one submission,
stops the run as ``failed``; anything less is retried, in this process, from the newest checkpoint (a
new segment, as a requeued process would start it). A failure at another step means progress was made
in between, so the count starts again. Failures outside the loop (a refused start, a misuse of the
API, no usable checkpoint) are never retried: trying again cannot change them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from trm_cluster.rundir.manifest import ManifestData, RunManifest
from trm_cluster.rundir.segments import fail_segment, failure_message

log = logging.getLogger(__name__)

DEFAULT_MAX_FAILURES = 3


@dataclass(frozen=True)
class FailureDecision:
    retry: bool
    step: int | None
    """The step that failed (None: the failure was not inside the loop)."""
    streak: int
    """How many times in a row this step has failed, this one included."""
    resume_step: int
    """Where a retry starts: the newest checkpoint."""
    cause: str
    """The exception's own line (the traceback's last)."""
    max_failures: int

    def console_line(self, run_dir: Path) -> str:
        max_failures = self.max_failures
        if self.retry:
            return (
                f"[trm_cluster] step {self.step} failed ({self.cause}); retrying from the checkpoint at step "
                f"{self.resume_step} (failure {self.streak} of {max_failures} allowed in a row)"
            )
        if self.step is None:
            return f"[trm_cluster] the run failed before training ({self.cause}); not retried"
        return (
            f"[trm_cluster] step {self.step} failed {self.streak} time(s) in a row ({self.cause}); the run stops "
            f"as failed (--max-failures {max_failures}). The traceback's last lines are in the manifest "
            f"(python -m trm_cluster.status {run_dir}); fix the cause, then: "
            f"python -m trm_cluster.submit --resume {run_dir}"
        )


def failure_streak(data: ManifestData) -> int:
    """Trailing segments of the latest job that failed at the same step as the last one."""
    if not data.segments or data.segments[-1].failed_step is None:
        return 0
    last = data.segments[-1]
    streak = 0
    for segment in reversed(data.segments):
        same = segment.end_reason in ("failed", "hung") and segment.failed_step == last.failed_step
        if not same or segment.job_id != last.job_id:  # a new submission (--resume) starts a fresh count
            break
        streak += 1
    return streak


def after_failure(run_dir: Path) -> FailureDecision:
    """Decide whether the failed segment's step is tried again (``--max-failures`` of the latest
    submission), and record the decision in the manifest."""
    with RunManifest(run_dir).update() as data:
        max_failures = int(data.launch.get("max_failures", DEFAULT_MAX_FAILURES))
        last = data.segments[-1]
        streak = failure_streak(data)
        retry = last.failed_step is not None and streak < max_failures
        cause = (
            last.message.strip().splitlines()[-1]
            if last.message and last.message.strip()
            else "unknown error"
        )
        if retry:
            data.status = "requeued"  # the next segment starts in this process
        else:
            data.status = "failed"
            if last.failed_step is not None:
                last.message = (last.message or "") + (
                    f"\nstep {last.failed_step} failed {streak} time(s) in a row: not retried (--max-failures {max_failures})"
                )
    return FailureDecision(retry, last.failed_step, streak, data.step, cause, max_failures)


def record_failure(
    manifest: RunManifest, segment: int, error: BaseException, world_size: int, step: int | None
) -> None:
    """Close the segment as failed (killed: an interrupt or exit) with the error's last lines; ``step``:
    the step it happened in when it may be retried (inside the loop, not a misuse). Never raises: the
    original error matters more than its record."""
    killed = isinstance(error, KeyboardInterrupt | SystemExit)
    try:
        message = failure_message(error, world_size)
        fail_segment(manifest, segment, "killed" if killed else "failed", message, None if killed else step)
    except Exception as manifest_error:
        log.error("could not record the failure in the manifest: %s", manifest_error)
