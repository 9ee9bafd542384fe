"""Two gloo ranks on submitit's local executor (``--tasks-per-node 2``): one collective stop, every rank's
own part in the checkpoint, one manifest writer and one W&B run, a dead rank that ends the others, and
the world-size check on resume. Real processes, real signals, real torch.distributed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import (
    alive,
    assert_one_continuous_wandb_run,
    assert_same_state,
    assert_same_training_state,
    children,
    clean_env,
    cli,
    manifest,
    tree_digest,
    wait_for,
    wandb_history,
)

pytestmark = pytest.mark.slow

TWO_RANKS = (
    "--preset",
    "regression",
    "--wandb-mode",
    "offline",
    "--executor",
    "local",
    "--tasks-per-node",
    "2",
)
RANK_IDENTITY = ("meta.run_uid",)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same two-rank run, uninterrupted."""
    work = tmp_path_factory.mktemp("distributed")
    done = cli("submit", *TWO_RANKS, "--wait", "--run-dir", str(work / "straight"), cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    return work / "straight"


def _rank_part(run_dir: Path, rank: int) -> dict:  # type: ignore[type-arg]
    record = manifest(run_dir)["checkpoints"][-1]
    (part,) = [p for p in record["parts"] if p["rank"] == rank]
    return torch.load(run_dir / part["file"], weights_only=True)  # type: ignore[no-any-return]


def test_two_ranks_interrupted_twice_equal_an_uninterrupted_two_rank_run(
    straight: Path, workdir: Path
) -> None:
    run_dir = workdir / "run"
    done = cli("submit", *TWO_RANKS, "--wait", "--run-dir", str(run_dir), "--preemptions", "2", cwd=workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    data = manifest(run_dir)
    # one manifest writer: one segment per process start of the job, not one per rank
    assert [s["end_reason"] for s in data["segments"]] == ["preempted", "preempted", "completed"]
    assert data["requeues"]["preempted"] == 2
    assert all(len(c["parts"]) == 1 for c in data["checkpoints"])  # every checkpoint has rank 1's part
    # both ranks wrote their periodic saves in the background: every one a segment made, also one at the
    # step a stop then ends (joined by the stop), not the last step's (synchronous)
    for run in (straight, run_dir):
        segments = manifest(run)["segments"]
        inside = [
            len([k for k in range(50, 200, 50) if s["start_step"] < k <= s["end_step"]]) for s in segments
        ]
        assert [s["timings"]["background_saves"] for s in segments] == inside and sum(inside) > 0, run
    assert_same_training_state(straight, run_dir)  # model, optimizer, EMA, rank 0's RNG, data position
    assert_same_state(_rank_part(straight, 1), _rank_part(run_dir, 1), ignore=RANK_IDENTITY)
    segments = assert_one_continuous_wandb_run(run_dir, list(range(5, 201, 5)))
    assert len(segments) == 3  # rank 0 alone talks to W&B
    assert len(wandb_history(straight)) == 1


def test_a_killed_rank_ends_the_other_and_the_run_resumes_exactly(straight: Path, workdir: Path) -> None:
    run_dir = workdir / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trm_cluster.submit", *TWO_RANKS, "--wait", "--run-dir", str(run_dir),
         "--step-delay-s", "0.02", "--no-wandb"],
        cwd=workdir, env=clean_env(TRM_CLUSTER_COLLECTIVE_TIMEOUT_S="30"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    rank0 = wait_for(lambda: manifest(run_dir)["checkpoints"] and manifest(run_dir)["segments"][-1]["pid"])
    (rank1,) = [pid for pid in children(int(manifest(run_dir)["launch"]["job_id"])) if pid != rank0]
    os.kill(rank1, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)  # rank 0 does not hang: its next collective fails
    assert proc.returncode == 1, out + err
    failed = manifest(run_dir)
    assert failed["status"] == "failed"
    assert failed["segments"][0]["end_reason"] == "failed"
    assert "another rank may have died" in failed["segments"][0]["message"]

    resumed = cli("submit", "--resume", str(run_dir), "--executor", "local", "--wait", "--step-delay-s", "0",
                  cwd=workdir)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [s["end_reason"] for s in manifest(run_dir)["segments"]] == ["failed", "completed"]
    assert_same_training_state(straight, run_dir, ignore=["meta.config.job.step_delay_s"])
    assert_same_state(_rank_part(straight, 1), _rank_part(run_dir, 1), ignore=RANK_IDENTITY)


def test_a_frozen_rank_does_not_hold_the_job_forever(workdir: Path) -> None:
    """A rank stopped by SIGSTOP never answers and never exits by itself: rank 0's next collective times
    out (``TRM_CLUSTER_COLLECTIVE_TIMEOUT_S``), it records the failure, and the controller then ends the
    frozen rank as ``srun --kill-on-bad-exit`` would. Nothing is left running. (No ``--wait``: the job
    must end by itself, as it does on Slurm.)"""
    run_dir = workdir / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trm_cluster.submit", *TWO_RANKS, "--run-dir", str(run_dir), "--steps", "100000",
         "--step-delay-s", "0.02", "--no-wandb"],
        cwd=workdir, env=clean_env(TRM_CLUSTER_COLLECTIVE_TIMEOUT_S="5", TRM_CLUSTER_KILL_ON_BAD_EXIT_S="1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    rank0 = wait_for(lambda: manifest(run_dir)["checkpoints"] and manifest(run_dir)["segments"][-1]["pid"])
    controller = int(manifest(run_dir)["launch"]["job_id"])
    (rank1,) = [pid for pid in children(controller) if pid != rank0]
    os.kill(rank1, signal.SIGSTOP)
    try:  # the controller (a child of submit, gone by now) holds the pipes until it ends
        out, err = proc.communicate(timeout=300)
    finally:
        frozen = alive(rank1)
        if frozen:
            os.kill(rank1, signal.SIGKILL)
    assert not frozen
    # the pipes close during the controller's own exit: give its interpreter a moment to finish leaving
    assert wait_for(lambda: not alive(controller), timeout=10)
    assert "ending the 1 left (as srun --kill-on-bad-exit)" in err, out + err
    failed = manifest(run_dir)
    assert failed["status"] == "failed" and failed["segments"][0]["end_reason"] == "failed"
    assert "stalled" in failed["segments"][0]["message"]


def test_another_number_of_ranks_is_refused_then_allowed(straight: Path, workdir: Path) -> None:
    run_dir = workdir / "copy"
    subprocess.run(["cp", "-r", str(straight), str(run_dir)], check=True)
    before = tree_digest(run_dir)
    refused = cli("submit", "--resume", str(run_dir), "--executor", "local", "--tasks-per-node", "1",
                  "--steps", "220", cwd=workdir)  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "written by 2 ranks" in line and "has 1" in line and "--allow-world-size-change" in line
    assert tree_digest(run_dir) == before

    allowed = cli("submit", "--resume", str(run_dir), "--executor", "local", "--tasks-per-node", "1",
                  "--steps", "220", "--allow-world-size-change", "--wait", cwd=workdir)  # fmt: skip
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    data = manifest(run_dir)
    assert data["status"] == "completed" and data["checkpoints"][-1]["step"] == 220
    assert data["checkpoints"][-1]["parts"] == []  # one rank now
    assert {"world_size": [2, 1]} in [c["changes"] for c in data["config_changes"]]
    # the W&B config of the new segment says so, as for any other change made on resume
    assert wandb_history(run_dir)[-1].config.get("world_size_modified") is True


STOP_AT_A_SAVE = """
import os, signal, torch, torch.distributed as dist, trm_cluster
torch.manual_seed(dist.get_rank() if dist.is_initialized() else 0)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
with trm_cluster.session(steps=100, checkpoint_every=50, log_every=10) as run:
    first = run.restore(model=model, optimizer=optimizer) == 0
    for step in run.steps():
        if first and step == 49 and dist.get_rank() == 0:  # rank 0 alone, in the step that ends at a save
            os.kill(os.getpid(), signal.SIGUSR2)
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""


def test_a_stop_that_reaches_one_rank_at_a_save_step_saves_alike_on_every_rank(workdir: Path) -> None:
    """The stop request is rank 0's alone when step 50's save is made. Whether a save runs in the
    background must not depend on it: rank 0 saving synchronously (the training thread's group) while rank 1
    saved in the background and went on to the stop check paired different collectives, and both hung
    until the collective timeout (seen in CI with a rehearsal that landed on a save step)."""
    script = workdir / "train.py"
    script.write_text(STOP_AT_A_SAVE)
    run_dir = workdir / "run"
    done = cli("submit", "--script", str(script), "--executor", "local", "--tasks-per-node", "2", "--wait",
               "--no-wandb", "--run-dir", str(run_dir), cwd=workdir,
               TRM_CLUSTER_COLLECTIVE_TIMEOUT_S="20")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    data = manifest(run_dir)
    stopped, completed = data["segments"]
    assert (stopped["end_step"], stopped["end_reason"], completed["end_reason"]) == (
        50,
        "preempted",
        "completed",
    )
    assert stopped["timings"]["background_saves"] == 1  # step 50's, which the stop then found done
    assert [c["step"] for c in data["checkpoints"]][-2:] == [50, 100]
    assert all(len(c["parts"]) == 1 for c in data["checkpoints"])
