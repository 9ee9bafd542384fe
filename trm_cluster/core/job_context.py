"""Where this process runs (Slurm, local, debug executor) and why it was asked to stop.

submitit guesses "timeout vs preemption" from wall time (every signal to a job of 10 minutes or less
is a "timeout"). Here the answer comes from the scheduler itself: Slurm records a PreemptTime when it
preempts a job and an EndTime near "now" when the time limit is close; the local executor tells its
tasks their timeout and signal delay through the environment.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from trm_cluster.core.signals import StopRequest

log = logging.getLogger(__name__)

TIME_LIMIT_SLACK_S = 60
"""Slurm checks limits every 30 s, so its warning can come up to 30 s before the requested delay."""


@dataclass(frozen=True)
class JobContext:
    executor: str
    """slurm, local, debug, or process (called directly, no submitit)."""
    job_id: str
    array_index: int | None
    restart_count: int
    host: str
    pid: int
    global_rank: int
    world_size: int
    started_at: float
    local_rank: int = 0

    @property
    def is_rank_zero(self) -> bool:
        return self.global_rank == 0

    @classmethod
    def detect(cls) -> JobContext:
        executor = _executor_kind()
        job_id, rank, world, local = str(os.getpid()), 0, 1, 0
        if executor != "process":
            import submitit

            env = submitit.JobEnvironment()
            job_id, rank, world, local = str(env.job_id), env.global_rank, env.num_tasks, env.local_rank
        array = os.environ.get("SLURM_ARRAY_TASK_ID")
        return cls(
            executor=executor,
            job_id=job_id,
            array_index=int(array) if array else None,
            restart_count=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            host=socket.gethostname(),
            pid=os.getpid(),
            global_rank=rank,
            world_size=world,
            started_at=_process_started_at(),
            local_rank=local,
        )

    def classify(self, request: StopRequest, signal_delay_s: float, time_limit_s: float | None = None) -> str:
        """'timeout', 'preempted' or 'cancelled' for a stop request, from what the scheduler says.

        'cancelled' (a SIGTERM that is neither the time-limit kill nor a preemption, i.e. ``scancel``)
        must not be requeued: ``scontrol requeue`` would succeed and turn the user's cancel into a restart.
        """
        if self.executor == "slurm":
            reason = _classify_slurm(self.job_id, request, signal_delay_s)
            if reason is not None:
                return reason
            # scontrol gave no answer: judge by the time since this process (the job's restart) began
            elapsed = request.received_at - self.started_at
            near_limit = (
                time_limit_s is not None and elapsed >= time_limit_s - signal_delay_s - TIME_LIMIT_SLACK_S
            )
            log.warning("scontrol gave no answer for job %s; %.0f s into a %s s limit: calling the stop a %s",
                        self.job_id, elapsed, time_limit_s, "timeout" if near_limit else "preemption")  # fmt: skip
            return "timeout" if near_limit else "preempted"
        if self.executor == "local":
            timeout_s = float(os.environ.get("SUBMITIT_LOCAL_TIMEOUT_S", "inf"))
            delay_s = float(os.environ.get("SUBMITIT_LOCAL_SIGNAL_DELAY_S", "0"))
            elapsed = request.received_at - self.started_at
            return "timeout" if elapsed >= timeout_s - delay_s - 2 else "preempted"
        return "preempted"


def pid_exists(pid: int) -> bool:
    """Whether a process of that pid exists on this host (another user's counts: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def seconds_from_env(name: str, default: float) -> float | None:
    """A duration set through the environment: ``default`` when unset or empty, None when it is not a
    positive, finite number of seconds (the caller says whether that is an error or a warning)."""
    raw = os.environ.get(name) or ""
    try:
        value = float(raw) if raw else default
    except ValueError:
        return None
    return value if value > 0 and math.isfinite(value) else None


def _process_started_at() -> float:
    """When this process started (the local executor times its signal from the task's start, and
    imports can take seconds); falls back to now where /proc is missing."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


def _executor_kind() -> str:
    if "SUBMITIT_DEBUG_JOB_ID" in os.environ:
        return "debug"
    if "SUBMITIT_LOCAL_JOB_ID" in os.environ:
        return "local"
    if "SLURM_JOB_ID" in os.environ and "SUBMITIT_FOLDER" in os.environ:
        return "slurm"
    return "process"


def _classify_slurm(job_id: str, request: StopRequest, delay_s: float) -> str | None:
    """Measured on Slurm 22.05 (docs/slurm.md): a preemption sets PreemptTime and moves EndTime to the
    end of the grace time; the time-limit warning leaves EndTime about ``delay_s`` (+ up to 30 s) ahead;
    at the time-limit kill Reason is TimeLimit; ``scancel`` moves EndTime to now with Reason None."""
    fields = slurm_job_fields(job_id)
    if fields is None:
        return None  # the caller judges by the time limit
    if fields.get("PreemptTime", "None") not in ("None", "Unknown", ""):
        return "preempted"
    if request.signum == signal.SIGTERM:
        return "timeout" if fields.get("Reason") == "TimeLimit" else "cancelled"
    end = _parse_slurm_time(fields.get("EndTime", ""))
    if end is None:
        return "preempted"
    remaining = end - request.received_at
    return "timeout" if remaining <= delay_s + TIME_LIMIT_SLACK_S else "preempted"


def slurm_job_fields(job_id: str) -> dict[str, str] | None:
    """``scontrol show job -o`` as a dict (None when scontrol is missing or fails)."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    fields: dict[str, str] = {}
    for token in out.split():
        key, sep, value = token.partition("=")
        if sep:
            fields.setdefault(key, value)
    return fields


def _parse_slurm_time(text: str) -> float | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()  # local time, like Slurm prints
    except ValueError:
        return None
