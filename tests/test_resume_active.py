"""``--resume`` of a run whose job still lives is refused: two processes would train one run at once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support import clean_env, cli, manifest


def test_resume_of_a_run_whose_local_job_still_trains_is_refused(workdir: Path) -> None:
    run_dir = workdir / "run"
    started = subprocess.run(  # no pipes: the job's controller would hold them open until it ends
        [sys.executable, "-m", "trm_cluster.submit", "--preset", "regression", "--executor", "local", "--no-wandb",
         "--steps", "100000", "--step-delay-s", "0.02", "--run-dir", str(run_dir)],
        cwd=workdir, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert started.returncode == 0
    controller = int(manifest(run_dir)["launch"]["job_id"])
    try:
        deadline = time.monotonic() + 300
        while not manifest(run_dir)["segments"]:  # the task has opened its segment: it trains
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        before = manifest(run_dir)
        refused = cli("submit", "--resume", str(run_dir), "--executor", "local", cwd=workdir)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        (line,) = refused.stderr.strip().splitlines()
        assert f"still active (job {controller}" in line and "--resume" in line
        after = manifest(run_dir)
        assert after["launch"] == before["launch"] and len(after["segments"]) == 1  # nothing submitted
        assert after["status"] == "running"
    finally:
        task = manifest(run_dir)["segments"][-1]["pid"] if manifest(run_dir)["segments"] else None
        for pid in (controller, task):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
