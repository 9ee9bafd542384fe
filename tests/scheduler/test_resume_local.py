"""End to end through the real CLI and submitit's local executor, with real signals.

The regression example workload (milliseconds per step) keeps these fast; the TRM workload has its
own exact-resume test in tests/workloads/trm/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support import (
    LOCAL_RUN,
    assert_one_continuous_wandb_run,
    assert_same_training_state,
    children,
    cli,
    manifest,
    open_segment_pid,
    start_local_run,
    status_json,
    wait_for_checkpoint,
    wandb_history,
)

from trm_cluster.wandb.tracker import FINISH_TIMEOUT_ENV, finish_timeout_s
from trm_cluster.wandb.writers import live_writers


def expected_steps(total: int = 200, every: int = 5) -> list[int]:
    return list(range(every, total + 1, every))


def test_preempted_three_times_ends_bit_identical_to_uninterrupted(workdir: Path) -> None:
    straight = workdir / "straight"
    interrupted = workdir / "interrupted"
    first = cli("submit", *LOCAL_RUN, "--run-dir", str(straight), cwd=workdir)
    assert first.returncode == 0, first.stdout + first.stderr
    second = cli("submit", *LOCAL_RUN, "--run-dir", str(interrupted), "--preemptions", "3", cwd=workdir)
    assert second.returncode == 0, second.stdout + second.stderr

    data = manifest(interrupted)
    reasons = [s["end_reason"] for s in data["segments"]]
    assert reasons == ["preempted", "preempted", "preempted", "completed"]
    assert all(s["signal"] == "SIGUSR2" for s in data["segments"][:3])
    # each segment starts where the previous one stopped: no step lost, none trained twice
    for before, after in zip(data["segments"], data["segments"][1:], strict=False):
        assert after["start_step"] == before["end_step"]
    assert data["status"] == "completed" and data["requeues"] == {"timeout": 0, "preempted": 3}
    assert len({s["job_id"] for s in data["segments"]}) == 1  # requeued, not resubmitted

    assert status_json(straight, workdir)["step"] == status_json(interrupted, workdir)["step"] == 200
    assert_same_training_state(straight, interrupted)
    assert "Resuming W&B run: " + data["wandb"]["run_id"] in second.stdout
    assert second.stdout.count("Starting new W&B run") == 1

    segments = assert_one_continuous_wandb_run(interrupted, expected_steps())
    assert len(segments) == 4
    assert [s.preempting for s in segments] == [True, True, True, False]
    assert [s.exit_code for s in segments] == [1, 1, 1, 0]
    # the same metrics as the uninterrupted run, step for step
    rows_a = {
        r["_step"]: r["train/loss"]
        for s in assert_one_continuous_wandb_run(straight, expected_steps())
        for r in s.history
    }
    rows_b = {r["_step"]: r["train/loss"] for s in segments for r in s.history}
    assert rows_a == rows_b


def test_sigterm_saves_at_the_next_step_and_requeues(workdir: Path) -> None:
    run_dir = workdir / "run"
    proc = start_local_run(workdir, run_dir, "--step-delay-s", "0.02")
    pid = open_segment_pid(run_dir)
    wait_for_checkpoint(run_dir, 50)
    os.kill(pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    first = manifest(run_dir)["segments"][0]
    assert first["end_reason"] == "preempted" and first["signal"] == "SIGTERM"
    assert manifest(run_dir)["status"] == "completed"


def test_sigkill_then_resume_closes_segment_as_killed_and_never_logs_a_step_twice(workdir: Path) -> None:
    run_dir = workdir / "run"
    proc = start_local_run(workdir, run_dir, "--step-delay-s", "0.02", "--log-every", "1", "--steps", "300",
                  "--checkpoint-every", "100")  # fmt: skip
    pid = open_segment_pid(run_dir)
    wait_for_checkpoint(run_dir, 100)
    ahead = _freeze_with_wandb_ahead_of_the_checkpoint(proc, pid, run_dir)
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err  # the job died: --wait reports failure
    assert manifest(run_dir)["segments"][0]["end_reason"] is None

    resumed = cli("submit", "--resume", str(run_dir), "--executor", "local", "--wait", cwd=workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    data = manifest(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["killed", "completed"]
    resume_step = data["segments"][1]["start_step"]
    assert resume_step == data["segments"][0]["end_step"] == ahead[1]
    first = assert_one_continuous_wandb_run(run_dir, list(range(1, 301)))[0]
    # the case this test is named after was reached: the killed segment's W&B file holds steps past the
    # checkpoint the resume starts from, which the resumed process then must not log again
    assert max(first.steps) >= ahead[0] > resume_step


def _freeze_with_wandb_ahead_of_the_checkpoint(
    proc: subprocess.Popen[str], pid: int, run_dir: Path
) -> tuple[int, int]:
    """Until the trainer's W&B file holds a step past its newest checkpoint (wandb-core writes its file
    late, by tens of steps on a loaded machine); then freeze the trainer (SIGSTOP), so that no checkpoint
    can follow, and return (W&B step on disk, checkpoint step)."""
    while True:
        assert proc.poll() is None, f"the run ended first: {proc.communicate()}"
        checkpoint = manifest(run_dir)["checkpoints"][-1]["step"]
        segments = wandb_history(run_dir)
        logged = max(segments[-1].steps, default=0) if segments else 0
        if logged > checkpoint:
            os.kill(pid, signal.SIGSTOP)
            if manifest(run_dir)["checkpoints"][-1]["step"] == checkpoint:
                return logged, checkpoint
            os.kill(pid, signal.SIGCONT)  # a checkpoint was published meanwhile: look again
        time.sleep(0.05)


def test_timeout_requeue_budget_is_enforced_and_classified_from_the_scheduler(workdir: Path) -> None:
    run_dir = workdir / "run"
    result = cli(
        "submit", *LOCAL_RUN, "--run-dir", str(run_dir),
        "--time-min", "1", "--signal-delay-s", "50", "--max-requeues", "1",
        "--steps", "100000", "--step-delay-s", "0.02",  # waits on the clock: a step that sleeps, not spins
        cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    data = manifest(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["timeout", "timeout"]
    assert data["requeues"]["timeout"] == 2 and data["status"] == "failed"
    assert "budget" in data["segments"][-1]["message"]
    first, second = data["segments"]
    assert second["start_step"] == first["end_step"]
    assert data["checkpoints"][-1]["step"] == second["end_step"] >= first["end_step"]

    # a manual resume gets a fresh budget (here: one more requeue), not the spent one
    resumed = cli("submit", "--resume", str(run_dir), "--executor", "local", "--wait", "--time-min", "1",
                  "--signal-delay-s", "50", "--max-requeues", "1", cwd=workdir)  # fmt: skip
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    data = manifest(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["timeout"] * 4
    assert data["requeues"]["timeout"] == 4 and data["timeouts_at_submit"] == 2 and data["status"] == "failed"


def _printed_step(run_dir: Path) -> int:
    """The last step the open segment's job printed (after logging its row; 0 before any)."""
    log = run_dir / "logs" / f"{manifest(run_dir)['segments'][-1]['job_id']}_0_log.out"
    lines = log.read_text().split("\n")[:-1] if log.exists() else []  # whole lines only
    steps = [int(line.split()[2].split("/")[0]) for line in lines if line.startswith("[trm_cluster] step ")]
    return steps[-1] if steps else 0


def _wait_for_printed_step(proc: subprocess.Popen[str], run_dir: Path, step: int) -> None:
    """Until the job printed ``step`` (its W&B row logged): an event, however slow the machine."""
    while _printed_step(run_dir) < step:
        assert proc.poll() is None, f"the run ended before step {step}: {proc.communicate()}"
        time.sleep(0.02)


def test_dataloader_workers_survive_and_ignore_a_signal_sent_to_every_process(workdir: Path) -> None:
    """Slurm signals every process of the step, DataLoader workers included: they must neither die of
    USR2 nor act on it (a forked worker with the job's handler would otherwise save and requeue)."""
    reference = workdir / "reference"
    big = ("--dataset-size", "8192")  # one epoch outlasts the run: the workers stay the same processes
    done = cli("submit", *LOCAL_RUN, *big, "--run-dir", str(reference), cwd=workdir)
    assert done.returncode == 0, done.stdout + done.stderr

    run_dir = workdir / "workers"
    proc = start_local_run(workdir, run_dir, *big, "--num-workers", "2", "--step-delay-s", "0.02")
    pid = open_segment_pid(run_dir)
    wait_for_checkpoint(run_dir, 50)
    workers = children(pid)
    assert len([w for w in workers if "python" in Path(f"/proc/{w}/cmdline").read_text()]) >= 2
    for target in [pid, *workers]:
        os.kill(target, signal.SIGUSR2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    data = manifest(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["preempted", "completed"]
    # the workers and the step delay are what the two runs differ in, on purpose
    assert_same_training_state(
        reference, run_dir, ignore=("meta.config.job.num_workers", "meta.config.job.step_delay_s")
    )


def test_wandb_core_killed_by_sigterm_does_not_stop_training_or_lose_rows(workdir: Path) -> None:
    """Slurm's SIGTERM reaches every process of the job, wandb-core included, which exits at once without
    flushing. Training must go on, save at the boundary, and the next process must fill the W&B gap."""
    run_dir = workdir / "run"
    proc = start_local_run(workdir, run_dir, "--step-delay-s", "0.02", "--log-every", "1")
    pid = open_segment_pid(run_dir)
    wait_for_checkpoint(run_dir, 50)
    cores = live_writers([pid])
    assert cores, "no wandb-core child found"
    for core in cores:
        os.kill(core, signal.SIGTERM)
    _wait_for_printed_step(proc, run_dir, _printed_step(run_dir) + 5)  # the job logs a few rows into the void
    os.kill(pid, signal.SIGUSR2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    data = manifest(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["preempted", "completed"]
    assert (
        "W&B stopped accepting rows"
        in (run_dir / "logs" / f"{data['launch']['job_id']}_0_log.err").read_text()
    )
    assert_one_continuous_wandb_run(run_dir, list(range(1, 201)))


def test_a_hung_wandb_core_does_not_hold_up_the_requeue(workdir: Path) -> None:
    """A wandb-core that stops answering (SIGSTOP; a stalled upload looks the same from here) would block
    ``finish`` until the scheduler kills the job, unrequeued. The finish is bounded: the job kills its
    wandb-core, requeues, and the next process re-logs the rows that never reached the disk."""
    run_dir = workdir / "run"
    proc = start_local_run(
        workdir, run_dir, "--step-delay-s", "0.02", "--log-every", "1", **{FINISH_TIMEOUT_ENV: "3"}
    )
    pid = open_segment_pid(run_dir)
    wait_for_checkpoint(run_dir, 50)
    (core,) = live_writers([pid])
    os.kill(core, signal.SIGSTOP)
    os.kill(pid, signal.SIGUSR2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    data = manifest(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["preempted", "completed"]
    log_err = (run_dir / "logs" / f"{data['launch']['job_id']}_0_log.err").read_text()
    assert f"W&B finish did not return within 3 s; killed wandb-core [{core}]" in log_err
    assert live_writers([pid]) == []  # the stopped one is gone, not left behind
    assert_one_continuous_wandb_run(run_dir, list(range(1, 201)))


@pytest.mark.parametrize(
    ("raw", "bound"),
    [
        ("", 60.0),
        ("3", 3.0),
        ("0.5", 0.5),
        ("abc", 60.0),
        ("0", 60.0),
        ("-1", 60.0),
        ("nan", 60.0),
        ("inf", 60.0),
    ],
)
def test_the_finish_bound_reads_the_environment_and_ignores_nonsense(
    monkeypatch: pytest.MonkeyPatch, raw: str, bound: float
) -> None:
    monkeypatch.setenv(FINISH_TIMEOUT_ENV, raw)
    assert finish_timeout_s() == bound
