"""``status`` tells a stepping run from a stalled one (ops/stall.py): seconds since the open segment's last
step boundary, from its heartbeat, against the run's step time. A real process hung in its step with no
watchdog armed; its heartbeat is then made old on disk, as it would be minutes later."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from support import clean_env, cli, status_json, wait_for

SCRIPT = """
import time, torch, trm_cluster
model = torch.nn.Linear(2, 2)
with trm_cluster.session(steps=10, checkpoint_every=0, log_every=1) as run:
    run.restore(model=model)
    for step in run.steps():
        if step == 3:
            open("stuck", "w").close()
            time.sleep(3600)
"""


def test_an_open_segment_shows_its_last_step_age_and_is_stalled_far_beyond_its_step_time(
    workdir: Path,
) -> None:
    (workdir / "train.py").write_text(SCRIPT)
    run_dir = workdir / "run"
    with subprocess.Popen(
        [sys.executable, "train.py"], cwd=workdir, env=clean_env(TRM_CLUSTER_RUN_DIR=str(run_dir), WANDB_MODE="disabled"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ) as hung:  # fmt: skip
        try:
            wait_for(lambda: (workdir / "stuck").exists(), what="the script never reached its hang")
            fresh = status_json(run_dir, workdir)
            assert fresh["status"] == "running" and fresh["stalled"] is False
            assert fresh["last_step_age_s"] is not None and 0 <= fresh["last_step_age_s"] < 60

            beat_file = run_dir / "heartbeat.json"
            beat = json.loads(beat_file.read_text())
            beat["time"] = time.time() - 3600  # what the file says an hour into the hang
            beat_file.write_text(json.dumps(beat))
            stalled = status_json(run_dir, workdir)
            assert stalled["stalled"] is True and stalled["last_step_age_s"] >= 3600
            shown = cli("status", str(run_dir), cwd=workdir).stdout
            assert (
                "STALLED: last step boundary 3600 s ago" in shown
                or "STALLED: last step boundary 360" in shown
            )
            folder = cli("status", str(workdir), cwd=workdir).stdout
            assert "running STALLED" in folder, folder
        finally:
            hung.kill()


def test_a_closed_run_has_no_last_step_age(workdir: Path) -> None:
    (workdir / "train.py").write_text(SCRIPT.replace("step == 3", "step == -1"))
    run_dir = workdir / "run"
    done = subprocess.run(
        [sys.executable, "train.py"], cwd=workdir, capture_output=True, text=True,
        env=clean_env(TRM_CLUSTER_RUN_DIR=str(run_dir), WANDB_MODE="disabled"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    status = status_json(run_dir, workdir)
    assert status["last_step_age_s"] is None and status["stalled"] is False
