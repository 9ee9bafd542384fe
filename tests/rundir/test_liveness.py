"""Is the process of a run's open segment still training on this host? (``lease.is_alive``, real processes)

A requeue that lands on the same node finds the dead segment's pid maybe reused: by a later process,
or by another user's. Counted as alive, it would refuse every requeue there (a stranded run). The old
process is alive only if its pid exists, is ours (same uid), is no zombie and started before the segment.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import new_run, this_process

from trm_cluster.core.job_context import JobContext
from trm_cluster.rundir.lease import take_over_or_refuse
from trm_cluster.rundir.manifest import CheckpointRecord, ManifestError, Segment, utc_now
from trm_cluster.rundir.segments import close_segment, open_segment

HOST = socket.gethostname()


def _segment(pid: int, start_time: str, host: str = HOST, index: int = 3) -> Segment:
    return Segment(
        index=index, job_id="7", array_index=None, restart_count=0, host=host, pid=pid, executor="local",
        start_time=start_time, start_step=0,
    )  # fmt: skip


@contextmanager
def _process(**options: Any) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "600"], **options)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


REFUSED = r"by pid {pid} on {host} \(job 7, segment 3\); refusing to train it twice"


@pytest.mark.parametrize("name", ["sleep", "sl) (eep"])  # /proc/PID/stat shows the name in parentheses
def test_the_live_process_that_opened_the_segment_is_refused(tmp_path: Path, name: str) -> None:
    program = tmp_path / name
    program.symlink_to(shutil.which("sleep") or "/bin/sleep")
    with _process(executable=program) as trainer:  # started, then its segment opened
        for start_time in (utc_now(), "not a time"):  # an unreadable start: the live pid decides
            with pytest.raises(ManifestError, match=REFUSED.format(pid=trainer.pid, host=HOST)):
                take_over_or_refuse(_segment(trainer.pid, start_time), this_process(), None)
        # the check only looked: the trainer dies of this SIGTERM, not of a signal the check sent (a pending
        # lower-numbered one, SIGHUP or SIGINT, would be delivered first)
        trainer.terminate()
        assert trainer.wait() == -signal.SIGTERM
    take_over_or_refuse(
        _segment(os.getpid(), utc_now()), this_process(), None
    )  # in-process requeue: our own segment


def test_a_pid_reused_by_a_later_process_does_not_strand_the_run(tmp_path: Path) -> None:
    """The segment was opened an hour ago by a process that died; its pid now belongs to a newer one."""
    manifest = new_run(tmp_path)
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="milliseconds")
    with _process() as stranger:
        with manifest.update() as data:
            data.segments.append(_segment(stranger.pid, an_hour_ago, index=0))
        opened = open_segment(manifest, this_process())
    data = manifest.read()
    assert [s.end_reason for s in data.segments] == ["killed", None] and opened.index == 1


def test_another_users_process_is_not_the_segments() -> None:
    if os.geteuid() == 0:
        with _process(user=65534) as foreign:  # nobody's, started before the segment
            take_over_or_refuse(_segment(foreign.pid, utc_now()), this_process(), None)
    else:  # not root: init is another user's process (the fallback, PermissionError, says so too)
        assert os.stat("/proc/1").st_uid != os.geteuid(), "needs root or an init of another user"
        take_over_or_refuse(_segment(1, utc_now()), this_process(), None)


@pytest.mark.parametrize("name", ["sleep", "sl) (eep"])
def test_a_dead_or_unreaped_process_is_not_the_segments(tmp_path: Path, name: str) -> None:
    program = tmp_path / name
    program.symlink_to(shutil.which("sleep") or "/bin/sleep")
    with _process() as dead:
        segment = _segment(dead.pid, utc_now())
    take_over_or_refuse(segment, this_process(), None)
    with _process(executable=program) as zombie:
        segment = _segment(zombie.pid, utc_now())
        zombie.kill()
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: still in /proc
        take_over_or_refuse(segment, this_process(), None)


def _at(minutes: float) -> str:
    return (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


def _dead_pid() -> int:
    with _process() as dead:
        return dead.pid


@pytest.mark.parametrize(
    ("checkpoints", "end_time", "end_step"),
    [
        # it saved steps 10, 15 and 20; the record of 25 carries a time before its start (another node's
        # clock, or a checkpoint an older segment published late): not its own, so it ended at 20's time
        ([(5, -10), (10, 2), (15, 4), (20, 6), (25, -5)], _at(6), 25),
        # it saved nothing: the checkpoint it started from is not its own, whatever time it carries
        ([(5, 3)], _at(0), 5),
        ([], _at(0), 0),
    ],
)
def test_a_killed_segment_ends_at_its_last_durable_checkpoint(
    tmp_path: Path, checkpoints: list[tuple[int, float]], end_time: str, end_step: int
) -> None:
    """What the next process records for a segment that was never closed: the time of the last checkpoint
    it made itself (the gap after it is no training), the run's newest step, and why it has no reason."""
    manifest = new_run(tmp_path)
    start_step = 5 if checkpoints else 0
    with manifest.update() as data:
        segment = _segment(_dead_pid(), _at(0), index=0)
        segment.start_step = start_step
        data.segments.append(segment)
        data.checkpoints = [CheckpointRecord(step, f"c{step}", 1, "x", _at(t)) for step, t in checkpoints]
    open_segment(manifest, this_process())
    killed, opened = manifest.read().segments
    assert (killed.end_time, killed.end_step, killed.end_reason) == (end_time, end_step, "killed")
    assert killed.message == "process ended without closing its segment (SIGKILL, OOM, node failure?)"
    assert (opened.index, opened.start_step, opened.end_reason) == (1, end_step, None)


def test_a_checkpoint_time_that_does_not_parse_is_not_the_killed_segments(tmp_path: Path) -> None:
    manifest = new_run(tmp_path)
    with manifest.update() as data:
        data.segments.append(_segment(_dead_pid(), _at(0), index=0))
        data.checkpoints = [
            CheckpointRecord(10, "c10", 1, "x", _at(2)),
            CheckpointRecord(20, "c20", 1, "x", "?"),
        ]
    open_segment(manifest, this_process())
    assert manifest.read().segments[0].end_time == _at(2)


def test_a_segment_records_where_its_process_runs_and_when_it_began(tmp_path: Path) -> None:
    manifest = new_run(tmp_path)
    with manifest.update() as data:
        data.status = "requeued"
    context = JobContext("slurm", "77", 4, 2, "node9", 4242, 0, 1, 0.0)
    now = datetime.now(UTC)
    before = now.replace(microsecond=now.microsecond // 1000 * 1000)  # the manifest keeps milliseconds
    open_segment(manifest, context, total_steps=30)
    data = manifest.read()
    (segment,) = data.segments
    assert (segment.job_id, segment.array_index, segment.restart_count) == ("77", 4, 2)
    assert (segment.host, segment.pid, segment.executor, segment.start_step) == ("node9", 4242, "slurm", 0)
    assert before <= datetime.fromisoformat(segment.start_time) <= datetime.now(UTC)
    assert (data.status, data.total_steps) == ("running", 30)


def test_a_requeue_of_a_reason_the_manifest_never_counted_starts_its_count_at_one(tmp_path: Path) -> None:
    """A manifest written before preemptions were counted holds only the timeouts."""
    manifest = new_run(tmp_path)
    with manifest.update() as data:
        data.requeues = {"timeout": 0}
    segment = open_segment(manifest, this_process())
    assert close_segment(manifest, segment.index, 1, "preempted", None, durable_step=1)
    assert manifest.read().requeues == {"timeout": 0, "preempted": 1}
