"""One process per run (lease.py): a live holder on another host is refused, a stale one taken over, the
scheduler's own restart of a job always takes over, and a holder that lost its lease writes nothing.

The holders here are segments of a real manifest with a real heartbeat file; what another host's process
would see is this process with another host name in its ``JobContext``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from support import new_run

from trm_cluster.core.job_context import JobContext
from trm_cluster.rundir.checkpoints import CheckpointStore, is_spare
from trm_cluster.rundir.heartbeat import Heartbeat
from trm_cluster.rundir.lease import LEASE_TIMEOUT_ENV, LeaseHeld, LeaseLost, ensure_held
from trm_cluster.rundir.manifest import ManifestError, RunManifest, Segment
from trm_cluster.rundir.segment_clock import SegmentClock
from trm_cluster.rundir.segment_timings import SegmentTimings
from trm_cluster.rundir.segments import close_segment, fail_segment, open_segment

HOST = socket.gethostname()
OTHER = "node-b"


def _ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _context(job_id: str = "8", host: str = HOST, array_index: int | None = None) -> JobContext:
    return JobContext("slurm", job_id, array_index, 0, host, os.getpid(), 0, 1, time.time())


def _held(
    run_dir: Path, opened_s_ago: float, beat_s_ago: float | None, array_index: int | None = None
) -> RunManifest:
    """A run whose segment 0 is held by job 7, pid 4242 on node-b, opened and last beating that long ago."""
    manifest = new_run(run_dir)
    with manifest.update() as data:
        data.segments.append(
            Segment(index=0, job_id="7", array_index=array_index, restart_count=0, host=OTHER, pid=4242,
                    executor="slurm", start_time=_ago(opened_s_ago), start_step=0)
        )  # fmt: skip
    if beat_s_ago is not None:  # its real heartbeat file, dated back
        Heartbeat(run_dir, segment=0).beat(step=3, save_s=0.0)
        beat = json.loads((run_dir / "heartbeat.json").read_text())
        (run_dir / "heartbeat.json").write_text(json.dumps({**beat, "time": time.time() - beat_s_ago}))
    return manifest


@pytest.mark.parametrize(
    ("opened_s_ago", "beat_s_ago", "timeout", "refused"),
    [
        (3600, 2, None, True),  # beating: alive, though its segment is old
        (3600, 1200, None, False),  # silent for 20 min > the default 15
        (1, None, None, True),  # starting up (no beat yet): its segment's opening counts
        (3600, None, None, False),  # opened an hour ago and never beat
        (3600, 1200, "3600", True),  # the timeout is the user's to set
        (3600, 30, "10", False),
    ],
)
def test_a_holder_on_another_host_is_judged_by_its_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    opened_s_ago: float, beat_s_ago: float | None, timeout: str | None, refused: bool,
) -> None:  # fmt: skip
    if timeout:
        monkeypatch.setenv(LEASE_TIMEOUT_ENV, timeout)
    manifest = _held(tmp_path, opened_s_ago, beat_s_ago)
    before = (tmp_path / "manifest.json").read_bytes()
    if refused:
        with pytest.raises(
            LeaseHeld, match="already being trained by pid 4242 on node-b \\(job 7, segment 0\\)"
        ):
            open_segment(manifest, _context())
        assert (tmp_path / "manifest.json").read_bytes() == before  # the holder's run, untouched
        return
    with caplog.at_level(logging.WARNING, logger="trm_cluster.rundir.segments"):
        opened = open_segment(manifest, _context())
    assert "pid 4242 on node-b (job 7, segment 0) is stale (no heartbeat for" in caplog.text
    taken, mine = manifest.read().segments
    assert (taken.end_reason, mine.index, mine.job_id, opened.index) == ("killed", 1, "8", 1)


def test_the_refusal_names_the_holder_and_when_its_lease_expires(tmp_path: Path) -> None:
    with pytest.raises(LeaseHeld) as refusal:
        open_segment(_held(tmp_path, 3600, 100), _context())
    (line,) = str(refusal.value).splitlines()
    assert "(last heartbeat 100 s ago); refusing to train it twice" in line
    assert f"expires 800 s from now ({LEASE_TIMEOUT_ENV}=900)" in line


def test_the_schedulers_restart_of_the_same_job_takes_over_at_once(tmp_path: Path) -> None:
    """A Slurm requeue that lands on another node: the scheduler ended the old process first."""
    manifest = _held(tmp_path / "requeued", 3600, 1)
    open_segment(manifest, _context(job_id="7", host="node-c"))
    assert [s.end_reason for s in manifest.read().segments] == ["killed", None]
    # another element of the same array is another job: a duplicated element must not take over
    with pytest.raises(LeaseHeld):
        open_segment(_held(tmp_path / "array", 3600, 1, array_index=0), _context(job_id="7", array_index=1))


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan"])
def test_a_lease_timeout_that_is_no_positive_number_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(LEASE_TIMEOUT_ENV, value)
    with pytest.raises(
        ManifestError, match=f"^{LEASE_TIMEOUT_ENV}='{value}' is not a positive number of seconds$"
    ):
        open_segment(_held(tmp_path, 3600, 1200), _context())


def test_a_holder_that_lost_its_lease_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It stalled past the timeout, another process took over and saved; then it woke up."""
    manifest = new_run(tmp_path)
    stalled = open_segment(manifest, _context(job_id="7", host=OTHER))
    stalled_store = CheckpointStore(manifest, keep_last=1, holder=stalled.index)
    stalled_store.save(5, {"w": torch.zeros(2)})
    stalled_clock = SegmentClock(manifest, stalled.index, True, SegmentTimings(), beat_every_s=0.0)
    stalled_clock.step_done(5)  # its first step: it beat
    monkeypatch.setenv(LEASE_TIMEOUT_ENV, "0.001")
    time.sleep(0.01)
    taker = open_segment(manifest, _context(job_id="8"))
    CheckpointStore(manifest, keep_last=1, holder=taker.index).save(10, {"w": torch.ones(2)})
    before = (tmp_path / "manifest.json").read_bytes()
    beat = (tmp_path / "heartbeat.json").read_bytes()
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())

    lost = f"segment {stalled.index} lost its lease to pid {os.getpid()} on {HOST} \\(job 8\\)"
    with pytest.raises(LeaseLost, match=lost):
        stalled_store.save(15, {"w": torch.full((2,), 2.0)})  # would prune the taker's step 10
    with pytest.raises(LeaseLost, match=lost):
        close_segment(manifest, stalled.index, 15, "preempted", None, durable_step=15)
    with pytest.raises(LeaseLost, match=lost):
        fail_segment(manifest, stalled.index, "failed", "boom", step=15)
    with pytest.raises(LeaseLost, match=lost):  # its next heartbeat notices, a few seconds in
        stalled_clock.step_done(16)
    assert (tmp_path / "manifest.json").read_bytes() == before
    assert (tmp_path / "heartbeat.json").read_bytes() == beat  # not overwritten with the stalled one's beat
    assert [c.step for c in manifest.read().checkpoints] == [10]
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    # the taker's checkpoint is still there (the stalled one's step 15 file is an orphan, never published:
    # the next holder's start removes it); the spare (a dropped file, no checkpoint) it may have written over
    assert {f for f in files if not is_spare(f)} <= set(left)


def test_a_manifest_whose_segments_are_gone_is_no_lease_either(tmp_path: Path) -> None:
    """Replaced under a running holder (restored from a backup, say): it must stop, not crash."""
    with pytest.raises(LeaseLost, match=r"^segment 0 lost its lease: another process"):
        ensure_held(new_run(tmp_path).read(), 0)
