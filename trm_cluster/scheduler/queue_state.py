"""A Slurm job's live state for ``status``: ``squeue`` while it is queued or running, else ``sacct``.

Why: the manifest knows what the run did, not what the scheduler is doing now (pending since when and
why, on which node, how long it has left). Best effort by design: a missing binary, a controller that
does not answer, or a job Slurm has forgotten gives ``None`` and a reason, never a failing ``status``.
"""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass
from typing import Any

TIMEOUT_S = 10.0
SQUEUE_FORMAT = "%i|%T|%r|%N|%L|%M"
"""Job id, state, reason, nodes, time left, time used."""


@dataclass(frozen=True)
class QueueState:
    job_id: str
    state: str
    """PENDING, RUNNING, COMPLETED, CANCELLED, ... as Slurm says it."""
    source: str
    """squeue (live) or sacct (the accounting record, once the job left the queue)."""
    reason: str | None = None
    """Why a pending job waits (Priority, Resources, BeginTime, ...)."""
    nodes: str | None = None
    time_left: str | None = None
    elapsed: str | None = None
    exit_code: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        parts = [f"slurm: job {self.job_id} {self.state}"]
        if self.reason and self.reason not in ("None", ""):
            parts.append(f"({self.reason})")
        if self.nodes:
            parts.append(f"on {self.nodes}")
        if self.elapsed:
            parts.append(f"elapsed {self.elapsed}")
        if self.time_left and self.time_left not in ("INVALID", "UNLIMITED"):
            parts.append(f"time left {self.time_left}")
        if self.exit_code:
            parts.append(f"exit {self.exit_code}")
        return " ".join(parts) + f"  [{self.source}]"


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {done.returncode}: {done.stderr.strip()[:200]}")
    return done.stdout


def queue_state(job_id: str) -> tuple[QueueState | None, str | None]:
    """The job's state and None, or None and why Slurm gave no answer."""
    try:
        try:
            out = _run(["squeue", "-h", "-j", job_id, "-o", SQUEUE_FORMAT])
        except RuntimeError:  # a job purged from the controller is an "invalid job id": ask sacct
            out = ""
        lines = [line.split("|") for line in out.splitlines() if line.count("|") == 5]
        if lines:  # an array job lists its pending elements on one line; the first line is the job's
            jid, state, reason, nodes, left, used = lines[0]
            return QueueState(
                jid, state, "squeue", reason or None, nodes or None, left or None, used or None
            ), None
        out = _run(
            ["sacct", "-n", "-P", "-X", "-j", job_id, "--format=JobID,State,NodeList,Elapsed,ExitCode"]
        )
        rows = [line.split("|") for line in out.splitlines() if line.count("|") == 4]
        if not rows:
            return None, f"job {job_id} is neither in squeue nor in sacct"
        jid, state, nodes, elapsed, code = rows[-1]  # a requeued job: its latest record
        node = None if nodes in ("", "None assigned") else nodes
        return QueueState(jid, state, "sacct", None, node, None, elapsed or None, code or None), None
    except subprocess.TimeoutExpired as error:
        return None, f"{error.cmd[0]} did not answer within {TIMEOUT_S:.0f} s"
    except FileNotFoundError as error:
        return None, f"{error.filename or 'squeue'} not found"
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        return None, str(error).splitlines()[0] if str(error) else type(error).__name__


def run_job_id(launch: dict[str, Any], segments: list[Any]) -> str | None:
    """The Slurm job of a run: its latest submission's (a requeue keeps the id)."""
    job = launch.get("job_id") or (segments[-1].job_id if segments else None)
    return str(job) if job else None
