"""``python -m trm_cluster.status RUN | head -1``: a reader that leaves early ends the command quietly
(status, submit --dry-run, sync --dry-run: the commands whose output is read through a pipe)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import clean_env, new_run


def test_status_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    new_run(tmp_path / "run")
    buffered = {k: v for k, v in clean_env().items() if k != "PYTHONUNBUFFERED"}  # a shell's default
    cases = [
        ("status", [str(tmp_path / "run")], buffered),
        ("status", [str(tmp_path), "--json"], clean_env()),  # a run, a folder
        ("submit", ["--preset", "regression", "--run-dir", str(tmp_path / "new"), "--dry-run"], buffered),
    ]
    for command, args, env in cases:
        status = subprocess.Popen(
            [sys.executable, "-m", f"trm_cluster.{command}", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert status.stdout is not None and status.stderr is not None
        status.stdout.close()  # the reader is gone before the first line: every write meets EPIPE
        err = status.stderr.read()
        assert status.wait(120) == 141 and err == "", (args, err)  # 128 + SIGPIPE, as a Unix tool
