"""What used to fail silently in a researcher's own script now says so: a script that dies before it opens
its session, a row logged after the session closed, a misuse the script caught and went on from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import clean_env, cli, manifest, status_json

BEFORE_SESSION = """
import trm_cluster
raise RuntimeError("WANDB_API_KEY is not set")  # their own set-up, before the session
with trm_cluster.session(steps=4) as run:
    pass
"""


def test_a_script_that_dies_before_its_session_is_recorded_failed_with_the_cause(workdir: Path) -> None:
    script = workdir / "train.py"
    script.write_text(BEFORE_SESSION)
    run_dir = workdir / "run"
    result = cli(
        "submit", "--script", str(script), "--executor", "local", "--no-wandb", "--run-dir", str(run_dir),
        "--wait", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "run failed at step 0/4" not in result.stdout  # the script never told the run its steps
    assert "segment 0: RuntimeError: WANDB_API_KEY is not set" in result.stdout, result.stdout
    assert status_json(run_dir, workdir)["status"] == "failed"
    segment = manifest(run_dir)["segments"][-1]
    assert segment["end_reason"] == "failed" and segment["failed_step"] is None  # not retried


AFTER_CLOSE = """
import torch, trm_cluster
model = torch.nn.Linear(2, 2)
with trm_cluster.session(steps=3) as run:
    run.restore(model=model)
    for _ in run.steps():
        run.log({"loss": 1.0})
run.log({"final/loss": 0.5})  # after the block: the run is already complete
"""

SWALLOWED = """
import torch, trm_cluster
model = torch.nn.Linear(2, 2)
with trm_cluster.session(steps=3) as run:
    try:
        run.log({"loss": 1.0})  # before run.restore(): a misuse, recorded as the segment's failure
    except trm_cluster.UsageError:
        pass  # the script goes on as if nothing happened
"""


def _standalone(workdir: Path, name: str, text: str) -> subprocess.CompletedProcess[str]:
    script = workdir / f"{name}.py"
    script.write_text(text)
    env = clean_env(TRM_CLUSTER_RUN_DIR=str(workdir / name), WANDB_MODE="disabled")
    return subprocess.run([sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True)


def test_logging_after_the_session_closed_is_a_usage_error_not_a_dropped_row(workdir: Path) -> None:
    done = _standalone(workdir, "after", AFTER_CLOSE)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("trm_cluster.core.errors.UsageError: run.log() after the session closed"), last
    assert manifest(workdir / "after")["status"] == "completed"  # the run itself is not harmed


def test_a_caught_misuse_does_not_turn_a_failed_segment_into_a_completed_run(workdir: Path) -> None:
    done = _standalone(workdir, "swallowed", SWALLOWED)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("trm_cluster: error:")]
    assert len(errors) == 1 and "before run.restore" in errors[0], done.stderr
    data = manifest(workdir / "swallowed")
    assert data["status"] == "failed" and data["segments"][-1]["end_reason"] == "failed"


OWN_INIT_BEFORE = """
import torch, wandb, trm_cluster
wandb.init(project="their-own")  # left in place from before trm_cluster
model = torch.nn.Linear(2, 2)
with trm_cluster.session(steps=3) as run:
    run.restore(model=model)
    for _ in run.steps():
        wandb.log({"loss": 1.0})
"""

OWN_INIT_INSIDE = """
import torch, wandb, trm_cluster
model = torch.nn.Linear(2, 2)
with trm_cluster.session(steps=3) as run:
    wandb.init(project="their-own")
    run.restore(model=model)
    for _ in run.steps():
        wandb.log({"loss": 1.0})
"""


def test_a_scripts_own_wandb_init_before_or_inside_the_session_is_refused_in_one_line(workdir: Path) -> None:
    for name, text in (("before", OWN_INIT_BEFORE), ("inside", OWN_INIT_INSIDE)):
        done = _standalone(workdir, name, text)
        assert done.returncode == 2, name + done.stdout + done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("trm_cluster: error:")]
        assert len(errors) == 1 and "calls wandb.init itself" in errors[0], name + done.stderr
        assert "Traceback" not in done.stderr, name
        data = manifest(workdir / name)
        assert data["status"] == "failed" and data["checkpoints"] == [], name  # no step ran, nothing saved
        assert "calls wandb.init itself" in data["segments"][-1]["message"], name


NEW_LR = """
import sys, torch, trm_cluster
model = torch.nn.Linear(2, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=float(sys.argv[1]))
with trm_cluster.session(steps=4) as run:
    run.restore(model=model, optimizer=optimizer)
    for _ in run.steps():
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
"""


def test_a_resume_whose_new_learning_rate_the_checkpoint_overrides_says_so_in_status(workdir: Path) -> None:
    script = workdir / "lr.py"
    script.write_text(NEW_LR)
    env = clean_env(
        TRM_CLUSTER_RUN_DIR=str(workdir / "lr"), WANDB_MODE="disabled", TRM_CLUSTER_STOP_AFTER="2"
    )
    first = subprocess.run(
        [sys.executable, str(script), "0.01"], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert first.returncode == 75, first.stdout + first.stderr
    del env["TRM_CLUSTER_STOP_AFTER"]
    second = subprocess.run(
        [sys.executable, str(script), "0.02"], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "optimizer group 0: lr 0.01 (checkpoint) vs 0.02" in second.stderr
    shown = cli("status", str(workdir / "lr"), cwd=workdir).stdout
    assert "warning: the restored optimizer trains on with the checkpoint's hyperparameters" in shown, shown
