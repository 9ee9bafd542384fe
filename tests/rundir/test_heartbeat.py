"""A SIGKILL between a heartbeat's write and its rename leaves ``.heartbeat.json.<pid>.tmp``; the next
segment's first beat removes it (and leaves a live writer's alone)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from support import clean_env

from trm_cluster.rundir.heartbeat import Heartbeat, read_beat

PAUSED_WRITER = """
import os, sys, time
from trm_cluster.rundir.heartbeat import Heartbeat
os.replace = lambda *args: (print("written, not renamed", flush=True), time.sleep(120))  # hold it here
Heartbeat(sys.argv[1], segment=0).beat(3, 0.0)
"""


def paused_writer(run_dir: Path) -> subprocess.Popen[str]:
    """A real process that wrote its heartbeat's temp file and has not renamed it yet."""
    writer = subprocess.Popen(
        [sys.executable, "-c", PAUSED_WRITER, str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "written, not renamed"
    return writer


def test_the_next_segments_first_beat_removes_a_killed_writers_temp_file(tmp_path: Path) -> None:
    killed, alive = paused_writer(tmp_path), paused_writer(tmp_path)
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(30)
        stale, live = (tmp_path / f".heartbeat.json.{p.pid}.tmp" for p in (killed, alive))
        assert stale.is_file() and live.is_file()
        Heartbeat(tmp_path, segment=1).beat(7, 0.0)
        assert not stale.exists() and live.is_file()  # a process still alive keeps its file
        beat = read_beat(tmp_path, 1)
        assert beat is not None and beat.step == 7
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            f".heartbeat.json.{alive.pid}.tmp",
            "heartbeat.json",
        ]
    finally:
        for process in (killed, alive):
            process.kill()
            process.wait(30)
