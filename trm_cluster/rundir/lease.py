"""One process per run: the manifest's open segment is the run's lease, ``heartbeat.json`` its pulse.

The holder is named by the open segment (job id, host, pid, start time); it beats at step boundaries
(heartbeat.py, a few times a minute). A process that finds the lease held decides, under the manifest
lock, whether to take it over or refuse to train:

- the holder's host is this one: its pid decides (alive, ours, and started before its segment);
- the same job on another host, restarted by its scheduler (a Slurm requeue onto another node): the
  scheduler ended the old process before it started this one, so the lease is taken over;
- another host and another job: the heartbeat decides; silent for longer than the lease timeout
  (``TRM_CLUSTER_LEASE_TIMEOUT_S``, default 15 min), the holder is presumed dead.

A holder whose lease was taken over (it stalled past the timeout, then woke up) is fenced: every write
it makes in its segment's name, a checkpoint included, checks the lease first and raises
:class:`LeaseLost` instead, so two processes never both write one run.

Why the heartbeat lives outside the manifest: a beat every few seconds under the manifest's lock and
fsync would cost more than the rare question it answers.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

from trm_cluster.core.job_context import JobContext, seconds_from_env
from trm_cluster.rundir.manifest import ManifestData, ManifestError, Segment

LEASE_TIMEOUT_ENV = "TRM_CLUSTER_LEASE_TIMEOUT_S"
DEFAULT_LEASE_TIMEOUT_S = 900.0
"""Long enough for a slow start-up, a final evaluation or a large save without a beat."""

START_SLACK_S = 1.0
"""How much later than the segment's ``start_time`` its process may seem to have started (``/proc``
counts in clock ticks from boot; the segment is opened seconds after its process started)."""


class LeaseHeld(ManifestError):
    """Another live process trains this run."""


class LeaseLost(ManifestError):
    """This process's segment was taken over by another process: it must stop writing the run."""


def lease_timeout_s() -> float:
    value = seconds_from_env(LEASE_TIMEOUT_ENV, DEFAULT_LEASE_TIMEOUT_S)
    if value is None:
        raw = os.environ.get(LEASE_TIMEOUT_ENV)
        raise ManifestError(f"{LEASE_TIMEOUT_ENV}={raw!r} is not a positive number of seconds")
    return value


def take_over_or_refuse(holder: Segment, context: JobContext, last_beat: float | None) -> str | None:
    """Decide whether ``context`` may take the run from the open segment ``holder``.

    ``last_beat``: the time of the holder's latest heartbeat (None: it has not beaten yet). Returns the
    notice to log when it takes over a stale lease (None: our own segment, reopened in this process), or
    raises :class:`LeaseHeld` naming the live holder.
    """
    if holder.host == context.host and holder.pid == context.pid:
        return None  # an in-process requeue (debug executor, a retry): the segment is this process's own
    who = f"pid {holder.pid} on {holder.host} (job {holder.job_id}, segment {holder.index})"
    if holder.host == context.host:
        if is_alive(holder):
            raise LeaseHeld(f"run is already being trained by {who}; refusing to train it twice")
        return f"the lease of {who} is stale (its process is gone): taking it over"
    if _same_job(holder, context):
        return f"job {holder.job_id} was restarted by its scheduler: taking over from {who}"
    silent_s = time.time() - last_sign_of_life(holder, last_beat)
    timeout = lease_timeout_s()
    if silent_s < timeout:
        raise LeaseHeld(
            f"run is already being trained by {who} (last heartbeat {silent_s:.0f} s ago); refusing to train "
            f"it twice. If that process is gone, its lease expires {timeout - silent_s:.0f} s from now "
            f"({LEASE_TIMEOUT_ENV}={timeout:g})"
        )
    return f"the lease of {who} is stale (no heartbeat for {silent_s:.0f} s > {timeout:g} s): taking it over"


def _same_job(holder: Segment, context: JobContext) -> bool:
    """Slurm's own restart of this job (the same job id and array element). (A local executor's restart
    is on the same host, where the pid decides.)"""
    return (
        context.executor == "slurm"
        and holder.executor == "slurm"
        and holder.job_id == context.job_id
        and holder.array_index == context.array_index
    )


def last_sign_of_life(holder: Segment, last_beat: float | None) -> float:
    """The holder's latest heartbeat, or its segment's opening if it has not beaten yet (start-up)."""
    try:
        opened = datetime.fromisoformat(holder.start_time).timestamp()
    except ValueError:
        opened = 0.0
    return max(opened, last_beat if last_beat is not None else 0.0)


def ensure_held(data: ManifestData, index: int) -> None:
    """Raise :class:`LeaseLost` if a later segment than ``index`` exists: another process took the run over."""
    if data.segments and data.segments[-1].index == index:
        return
    taker = data.segments[-1] if data.segments else None
    by = f" to pid {taker.pid} on {taker.host} (job {taker.job_id})" if taker else ""
    raise LeaseLost(
        f"segment {index} lost its lease{by}: another process now trains this run; this one stops without "
        "writing to it"
    )


def is_alive(segment: Segment) -> bool:
    """Whether the segment's own process is alive: its pid exists, is no zombie, is ours (same uid) and
    started before the segment did. A pid reused by a later process, or by another user's, is not it
    (counted as alive, it would strand the run: every requeue on this node refused). Without ``/proc``
    only the pid and the uid (``PermissionError``) can tell."""
    try:
        os.kill(segment.pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or another user's process
        return False
    try:
        owner = os.stat(f"/proc/{segment.pid}").st_uid
        fields = Path(f"/proc/{segment.pid}/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return not os.path.isdir("/proc")  # no /proc: the pid exists; /proc without it: it just ended
    state, ticks = fields[0], int(fields[19])
    started = time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    if state in ("Z", "X") or owner != os.geteuid():
        return False
    try:
        opened = datetime.fromisoformat(segment.start_time).timestamp()
    except ValueError:
        return True  # an unreadable start time: the pid, alive and ours, is all we know
    return started <= opened + START_SLACK_S
