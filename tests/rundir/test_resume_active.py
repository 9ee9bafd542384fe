"""Two processes never train one run at once: ``--resume`` of a run whose job still lives is refused, and
so is a second process on another host while the holder's heartbeat is live; once its lease is stale the
newcomer takes over and the old holder, fenced, stops without writing the run (lease.py)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from support import alive, clean_env, cli, manifest


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

        # the same run started by hand on another host (its own UTS namespace: another host name)
        second = _on_another_host(run_dir, workdir)
        assert second.wait(timeout=300) != 0
        line = second.stderr.read().strip().splitlines()[-1]  # type: ignore[union-attr]
        assert line.startswith("trm_cluster.rundir.lease.LeaseHeld: run is already being trained by pid"), (
            line
        )
        assert (
            f"(job {controller}, segment 0) (last heartbeat" in line and "refusing to train it twice" in line
        )
        assert len(manifest(run_dir)["segments"]) == 1

        taker = _on_another_host(run_dir, workdir, TRM_CLUSTER_LEASE_TIMEOUT_S="0.001")  # any beat is stale
        try:
            while len(segments := manifest(run_dir)["segments"]) < 2:
                assert time.monotonic() < deadline and taker.poll() is None, (
                    "the second process never took over"
                )
                time.sleep(0.05)
            assert segments[0]["end_reason"] == "killed" and segments[1]["host"] == "node-b"
            while alive(controller):  # the fenced holder's next heartbeat ends its job
                assert time.monotonic() < deadline, "the old holder went on training"
                time.sleep(0.1)
            logs = "".join(p.read_text() for p in (run_dir / "logs").glob("*_log.err"))
            assert "LeaseLost: segment 0 lost its lease to pid" in logs
            assert manifest(run_dir)["segments"][1]["end_reason"] is None  # the taker trains on, unharmed
        finally:
            taker.kill()
            taker.wait()
    finally:
        task = manifest(run_dir)["segments"][-1]["pid"] if manifest(run_dir)["segments"] else None
        for pid in (controller, task):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def _on_another_host(run_dir: Path, cwd: Path, **env: str) -> subprocess.Popen[str]:
    code = f"from trm_cluster.scheduler.job import TrainingJob; TrainingJob({str(run_dir)!r})()"
    command = f"hostname node-b && exec {sys.executable} -c {shlex.quote(code)}"
    return subprocess.Popen(["unshare", "--uts", "sh", "-c", command], cwd=cwd, env=clean_env(**env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
