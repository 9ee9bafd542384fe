"""The debug executor's job run here, in this process, until it ends: requeues included."""

from __future__ import annotations

import os
from typing import Any


def run_in_process(job: Any) -> BaseException | None:
    """Run a debug-executor job now, in this process; return its error instead of opening pdb."""
    os.environ["SUBMITIT_DEBUG_JOB_ID"] = str(job.job_id)
    try:
        return job.exception()  # type: ignore[no-any-return]
    finally:
        os.environ.pop("SUBMITIT_DEBUG_JOB_ID", None)
