"""Is the process of a run's open segment still training? (``segments.refuse_if_alive``, real processes)

A requeue that lands on the same node finds the dead segment's pid maybe reused: by a later process,
or by another user's. Counted as alive, it would refuse every requeue there (a stranded run). The old
process is alive only if its pid exists, is ours (same uid), is no zombie and started before the segment.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import new_run, this_process

from trm_cluster.manifest import ManifestError, Segment, utc_now
from trm_cluster.segments import open_segment, refuse_if_alive

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


def test_the_live_process_that_opened_the_segment_is_refused() -> None:
    with _process() as trainer:  # started, then its segment opened
        for start_time in (utc_now(), "not a time"):  # an unreadable start: the live pid decides
            with pytest.raises(ManifestError, match=rf"by pid {trainer.pid} on {HOST} \(segment 3\)"):
                refuse_if_alive(_segment(trainer.pid, start_time), this_process())
        refuse_if_alive(_segment(trainer.pid, utc_now(), host="elsewhere"), this_process())  # not this pid
    refuse_if_alive(_segment(os.getpid(), utc_now()), this_process())  # in-process requeue: our own segment


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
            refuse_if_alive(_segment(foreign.pid, utc_now()), this_process())
    else:  # not root: init is another user's process (the fallback, PermissionError, says so too)
        assert os.stat("/proc/1").st_uid != os.geteuid(), "needs root or an init of another user"
        refuse_if_alive(_segment(1, utc_now()), this_process())


def test_a_dead_or_unreaped_process_is_not_the_segments() -> None:
    with _process() as dead:
        segment = _segment(dead.pid, utc_now())
    refuse_if_alive(segment, this_process())
    with _process() as zombie:
        segment = _segment(zombie.pid, utc_now())
        zombie.kill()
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: still in /proc
        refuse_if_alive(segment, this_process())
