"""A researcher's own script (examples/train_script.py) through ``trm_cluster.session()``:
real processes, real signals, submitit's local executor, W&B offline files read back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import (
    REPO,
    assert_one_continuous_wandb_run,
    assert_same_state,
    assert_same_training_state,
    clean_env,
    cli,
    manifest,
    small_script,
    tree_digest,
    wait_for_checkpoint,
    wandb_history,
)

SCRIPT = REPO / "examples" / "train_script.py"
STEPS = 120
# the run's config differs between a plain `python train.py` reference and a submitted run (flags given
# to submit are recorded), and so does the final model's path; the training state must not
NOT_TRAINING_STATE = ("meta.config", "meta.workload")


def _reference(workdir: Path, steps: int = STEPS, *args: str) -> Path:
    """The script run once, uninterrupted, by itself (`python train.py`), in its own run directory."""
    run_dir = workdir / "reference"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--max-steps", str(steps), "--out", str(workdir / "ref.pt"), *args],
        cwd=workdir,
        env=clean_env(TRM_CLUSTER_RUN_DIR=str(run_dir), WANDB_MODE="offline"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("final evaluation:") == 1
    return run_dir


def _job_output(run_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted((run_dir / "logs").glob("*_log.out")))


@pytest.mark.slow
def test_script_preempted_twice_ends_bit_identical_with_one_wandb_run_and_one_final_eval(
    workdir: Path,
) -> None:
    reference = _reference(workdir)
    run_dir = workdir / "run"
    result = cli(
        "submit", "--script", str(SCRIPT), "--executor", "local", "--wait", "--wandb-mode", "offline",
        "--run-dir", str(run_dir), "--steps", str(STEPS), "--preemptions", "2",
        "--script-args", "--max-steps", str(STEPS), "--out", str(workdir / "final.pt"),
        cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

    data = manifest(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["preempted", "preempted", "completed"]
    assert data["requeues"] == {"timeout": 0, "preempted": 2} and data["status"] == "completed"
    for before, after in zip(data["segments"], data["segments"][1:], strict=False):
        assert after["start_step"] == before["end_step"]
    # model, EMA, optimizer, scheduler, StatefulDataLoader with 2 workers, python/numpy/torch RNG
    assert_same_training_state(reference, run_dir, ignore=NOT_TRAINING_STATE)
    # the model the script saved after its loop (torch.save's archive names differ with the file name)
    assert_same_state(
        torch.load(workdir / "ref.pt", weights_only=True), torch.load(workdir / "final.pt", weights_only=True)
    )

    segments = assert_one_continuous_wandb_run(run_dir, list(range(10, STEPS + 1, 10)))
    rows = [row for s in segments for row in s.history]
    assert [r["_step"] for r in rows if "final/val_mse" in r] == [STEPS]  # the final eval: once
    assert [r["_step"] for r in rows if "val/mse" in r] == [100]
    assert all("grad_norm" in r for r in rows)  # the diagnostic computed only when it is logged
    assert _job_output(run_dir).count("final evaluation:") == 1
    reference_rows = {r["_step"]: r["loss"] for s in wandb_history(reference) for r in s.history}
    assert {r["_step"]: r["loss"] for r in rows} == reference_rows


@pytest.mark.slow
def test_script_sigkilled_then_resumed_ends_bit_identical(workdir: Path) -> None:
    reference = _reference(workdir, 200)
    run_dir = workdir / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trm_cluster.submit", "--script", str(SCRIPT), "--executor", "local", "--wait",
         "--wandb-mode", "offline", "--run-dir", str(run_dir), "--checkpoint-every", "50",
         "--script-args", "--max-steps", "200", "--out", str(workdir / "final.pt"), "--sleep-per-step", "0.02"],
        cwd=workdir, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for_checkpoint(run_dir, 100)
    os.kill(int(manifest(run_dir)["segments"][-1]["pid"]), signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err

    resumed = cli("submit", "--resume", str(run_dir), "--executor", "local", "--wait", cwd=workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    data = manifest(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["killed", "completed"]
    killed, resumed_segment = data["segments"]
    assert resumed_segment["start_step"] == killed["end_step"] >= 100
    # the killed segment trained until its last durable checkpoint; the time after it is a gap, not training
    last_durable = next(c for c in data["checkpoints"] if c["step"] == killed["end_step"])
    assert killed["end_time"] == last_durable["created_at"] < resumed_segment["start_time"]
    assert_same_training_state(reference, run_dir, ignore=NOT_TRAINING_STATE)
    assert_one_continuous_wandb_run(run_dir, list(range(10, 201, 10)))
    assert _job_output(run_dir).count("final evaluation:") == 1
    # log_every 10: the steps between two rows were never logged, so nothing is reported lost
    errors = "".join(p.read_text() for p in (run_dir / "logs").glob("*_log.err"))
    assert "lost" not in errors, errors


BAD_SCRIPTS = {
    "never_loops": ("run.restore(model=model)\n", "without run.steps()"),
    "loops_twice": (
        "run.restore(model=model)\n    for _ in run.steps():\n        pass\n    for _ in run.steps():\n        pass\n",
        "run.steps() is called once",
    ),
    "no_state_dict": ("run.restore(model=model, lr=0.1)\n", "a float has no state_dict()"),
    "numpy_state": (
        "import numpy as np\n    run.restore(model=model, extra={'mask': np.zeros(3)})\n"
        "    for _ in run.steps():\n        pass\n",
        "'extra.mask' holds a numpy.ndarray",
    ),
}


def test_misusing_the_session_gives_one_line_naming_the_fix_and_loses_nothing(workdir: Path) -> None:
    header = "import torch, trm_cluster\nmodel = torch.nn.Linear(2, 2)\nwith trm_cluster.session(steps=4) as run:\n    "
    good = workdir / "good.py"
    good.write_text(header + "run.restore(model=model)\n    for _ in run.steps():\n        pass\n")
    env = clean_env(TRM_CLUSTER_RUN_DIR=str(workdir / "run"), WANDB_MODE="disabled")
    first = subprocess.run([sys.executable, str(good)], cwd=workdir, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    checkpoints = tree_digest(workdir / "run" / "checkpoints")
    assert checkpoints

    for case, (body, expected) in BAD_SCRIPTS.items():
        script = workdir / f"{case}.py"
        script.write_text(header + body)
        bad = subprocess.run(
            [sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True
        )
        assert bad.returncode == 2, case + bad.stdout + bad.stderr
        errors = [line for line in bad.stderr.splitlines() if line.startswith("trm_cluster: error:")]
        assert len(errors) == 1 and expected in errors[0], case + bad.stderr
        assert "Traceback" not in bad.stderr, case
        assert tree_digest(workdir / "run" / "checkpoints") == checkpoints, case
        last = manifest(workdir / "run")["segments"][-1]
        assert last["end_reason"] == "failed" and expected in last["message"], case


SMALL_SCRIPT = small_script("steps=6, log_every=1")


def test_debug_executor_requeues_a_script_in_process_and_records_its_new_arguments(workdir: Path) -> None:
    (workdir / "train.py").write_text(SMALL_SCRIPT)
    run_dir = workdir / "run"
    first = cli("submit", "--script", "train.py", "--executor", "debug", "--no-wandb", "--run-dir", str(run_dir),
                "--steps", "10", "--preemptions", "2", "--script-args", "--lr", "0.05", cwd=workdir)  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("after the loop at step") == 1  # the in-process requeues skip it
    assert [s["end_reason"] for s in manifest(run_dir)["segments"]] == ["preempted", "preempted", "completed"]

    # flags given to submit win over the script's session(steps=6); new script arguments are recorded
    resumed = cli("submit", "--resume", str(run_dir), "--steps", "12", "--script-args", "--lr", "0.2",
                  cwd=workdir)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    data = manifest(run_dir)
    assert data["checkpoints"][-1]["step"] == 12 and data["segments"][-1]["executor"] == "debug"
    assert data["config_changes"][-1]["changes"] == {
        "run.steps": [10, 12],
        "script.args": [["--lr", "0.05"], ["--lr", "0.2"]],
    }
    assert data["config"]["script"]["args"] == ["--lr", "0.2"]
