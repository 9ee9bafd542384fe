"""A SIGKILLed trainer's wandb-core lives on for a moment, flushing into its .wandb file: the next
process must read the W&B watermark only once it is gone (``WandbStart(..., killed)``, as the session
starts W&B)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import wandb  # noqa: F401  # imported here, not in begin(): its import outlasts the writer, hiding a skipped wait
from support import new_run

from trm_cluster.rundir.manifest import Segment, utc_now
from trm_cluster.wandb import writers
from trm_cluster.wandb.tracker import WandbStart

WRITER = """
import sys, time
with open(sys.argv[1], "a") as out:
    for row in range(20):  # ~1 s of rows, then the last flush, then exit
        print(row, file=out, flush=True)
        time.sleep(0.05)
    print("flushed", file=out, flush=True)
"""


def test_start_waits_until_a_killed_processs_wandb_core_is_gone(tmp_path: Path) -> None:
    trainer = subprocess.Popen(["true"])
    trainer.wait()  # the killed trainer: its pid is dead, its segment open
    core = tmp_path / "wandb-core"  # what writers.live_writers recognizes: argv[0] wandb-core*, --pid
    core.symlink_to(sys.executable)
    rows = tmp_path / "rows"
    writer = subprocess.Popen([str(core), "-c", WRITER, str(rows), "--pid", str(trainer.pid)])
    try:
        # Popen returns once exec has begun; /proc/PID/cmdline holds the new argv only a moment later
        deadline = time.monotonic() + 10
        while writers.live_writers([trainer.pid]) != [writer.pid] and time.monotonic() < deadline:
            time.sleep(0.005)
        assert writers.live_writers([trainer.pid]) == [writer.pid]
        data = new_run(tmp_path / "run").read()
        data.wandb.mode = "disabled"
        killed = Segment(0, "1", None, 0, socket.gethostname(), trainer.pid, "local", utc_now(), 0)
        tracker = WandbStart(data, tmp_path / "run", "allow", True, killed).join()
        assert writer.poll() is not None, "W&B started while the killed process's wandb-core wrote"
        assert rows.read_text().endswith("19\nflushed\n")
        tracker.finish(preempting=False)
    finally:
        writer.kill()
        writer.wait()
