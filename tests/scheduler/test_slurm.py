"""Requeue against a real Slurm (scripts/slurm-local.sh): time limit, preemption, on demand, exactness.

Every job goes through the real CLI (``python -m trm_cluster.submit --executor slurm --partition gpu``)
and each test asserts the manifest, the checkpoints and the W&B offline files. The node has two CPUs:
the time-limit job (long, mostly waiting for Slurm's 30 s limit checks) is submitted first and runs
beside the on-demand test; the preemption test runs last and alone, because its preemptor takes the
whole node and would preempt any job beside it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hang_script import EVERY as HANG_EVERY
from hang_script import HANG, SLEEP_LINE
from hang_script import SCRIPT as HANG_SCRIPT
from hang_script import STEPS as HANG_STEPS
from support import (
    REPO,
    assert_one_continuous_wandb_run,
    assert_same_state,
    assert_same_training_state,
    clean_env,
    cli,
    manifest,
    wandb_history,
)

# the waits below add up to more than the default 900 s per test when the node is slow
pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1800)]

STEPS = 400
RUN = ("--preset", "regression", "--wandb-mode", "offline", "--steps", str(STEPS), "--checkpoint-every", "50")
SLURM = ("--executor", "slurm", "--partition", "gpu", "--cpus-per-task", "1")
EXPECTED_STEPS = list(range(5, STEPS + 1, 5))


def submit(workdir: Path, run_dir: Path, *extra: str, wait: bool = False) -> subprocess.CompletedProcess[str]:
    args = [*RUN, *SLURM, "--run-dir", str(run_dir), *extra] + (["--wait"] if wait else [])
    result = cli("submit", *args, cwd=workdir, timeout=900)
    assert result.returncode == 0 or wait, result.stdout + result.stderr
    return result


def job_id(run_dir: Path) -> str:
    return str(manifest(run_dir)["launch"]["job_id"])


def wait_for(predicate, what: str, timeout: float = 300) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def training(run_dir: Path, segment: int, past_step: int = 0) -> bool:
    """Segment ``segment`` is open and has published a checkpoint past ``past_step``."""
    data = manifest(run_dir)
    return (
        len(data["segments"]) == segment + 1
        and data["segments"][segment]["end_reason"] is None
        and data["segments"][segment]["wandb_dir"] is not None
        and any(c["step"] > past_step for c in data["checkpoints"])
    )


def wait_for_end(run_dir: Path, timeout: float = 600, **env: str) -> dict:  # type: ignore[type-arg]
    """``env``: SLURM_CONF of another cluster than the test cluster."""
    wait_for(lambda: manifest(run_dir)["status"] in ("completed", "failed"), "the run to end", timeout)
    jid = job_id(run_dir)
    wait_for(lambda: not _squeue(jid, **env), f"job {jid} to leave the queue", 60)
    return manifest(run_dir)


def _squeue(jid: str, **env: str) -> str:
    return subprocess.run(
        ["squeue", "-h", "-j", jid], capture_output=True, text=True, env=clean_env(**env)
    ).stdout.strip()


def assert_resumed_exactly(run_dir: Path, reference: Path) -> None:
    data = manifest(run_dir)
    assert data["status"] == "completed", data
    for before, after in zip(data["segments"], data["segments"][1:], strict=False):
        assert after["start_step"] == before["end_step"]
        assert after["job_id"] == before["job_id"]  # requeued, same job id
        assert after["restart_count"] == before["restart_count"] + 1  # SLURM_RESTART_COUNT grows
    assert data["checkpoints"][-1]["step"] == STEPS
    # the step delay (slowing the jobs down so that signals land mid-run) is the one setting that differs
    assert_same_training_state(reference, run_dir, ignore=["meta.config.job.step_delay_s"])
    assert_one_continuous_wandb_run(run_dir, EXPECTED_STEPS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slurm")


@pytest.fixture(scope="module")
def reference(workdir: Path) -> Path:
    """The weights of the same run, uninterrupted (in-process; the executor does not change the math)."""
    run_dir = workdir / "reference"
    result = cli("submit", *RUN, "--executor", "debug", "--run-dir", str(run_dir), cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [s["end_reason"] for s in manifest(run_dir)["segments"]] == ["completed"]
    return run_dir


@pytest.fixture(scope="module")
def time_limited_run(workdir: Path) -> Iterator[Path]:
    """Started first, checked later: a 2-minute limit, warned 60 s before (Slurm: 60-90 s before)."""
    run_dir = workdir / "time-limit"
    submit(workdir, run_dir, "--time-min", "2", "--signal-delay-s", "60", "--step-delay-s", "0.15",
           "--gpus-per-node", "1")  # fmt: skip
    yield run_dir
    subprocess.run(["scancel", job_id(run_dir)], env=clean_env(), check=False)


def test_on_demand_scancel_and_preempt_command(
    workdir: Path, time_limited_run: Path, reference: Path
) -> None:
    run_dir = workdir / "on-demand"
    submit(workdir, run_dir, "--step-delay-s", "0.05")
    jid = job_id(run_dir)
    wait_for(lambda: training(run_dir, 0, past_step=0), "segment 0 to train")
    subprocess.run(["scancel", "--signal=USR2", jid], env=clean_env(), check=True)
    wait_for(
        lambda: training(run_dir, 1, past_step=manifest(run_dir)["segments"][0]["end_step"] or 0), "segment 1"
    )
    preempted = cli("preempt", str(run_dir), cwd=workdir)
    assert preempted.returncode == 0 and f"Slurm job {jid}" in preempted.stdout, preempted.stderr
    data = wait_for_end(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["preempted", "preempted", "completed"]
    assert [s["signal"] for s in data["segments"]] == ["SIGUSR2", "SIGUSR2", None]
    assert data["requeues"] == {"timeout": 0, "preempted": 2}
    assert_resumed_exactly(run_dir, reference)


def test_scancel_saves_and_is_not_requeued(workdir: Path, time_limited_run: Path) -> None:
    run_dir = workdir / "cancelled"
    submit(workdir, run_dir, "--step-delay-s", "0.05")
    wait_for(lambda: training(run_dir, 0, past_step=0), "segment 0 to train")
    subprocess.run(["scancel", job_id(run_dir)], env=clean_env(), check=True)
    data = wait_for_end(run_dir)  # also: the job left the queue instead of waiting there to restart
    (segment,) = data["segments"]
    assert segment["end_reason"] == "killed" and segment["signal"] == "SIGTERM"
    assert "cancelled" in segment["message"]
    assert data["status"] == "failed" and data["requeues"] == {"timeout": 0, "preempted": 0}
    assert data["checkpoints"][-1]["step"] == segment["end_step"] > 0  # the work up to the cancel is saved


def test_time_limit_requeues_with_the_same_job_id(
    workdir: Path, time_limited_run: Path, reference: Path
) -> None:
    data = wait_for_end(time_limited_run, timeout=900)
    reasons = [s["end_reason"] for s in data["segments"]]
    assert reasons[-1] == "completed" and "timeout" in reasons, reasons
    assert set(reasons[:-1]) == {"timeout"}, reasons  # submitit guesses "timeout" for any job under 10 min
    assert data["requeues"]["timeout"] == len(reasons) - 1
    assert_resumed_exactly(time_limited_run, reference)
    out = (time_limited_run / "logs" / f"{job_id(time_limited_run)}_0_log.out").read_text()
    assert "Starting new W&B run" in out and out.count("Resuming W&B run") == len(reasons) - 1


def test_preemption_by_a_higher_priority_job(workdir: Path, time_limited_run: Path, reference: Path) -> None:
    wait_for_end(time_limited_run, timeout=900)  # the preemptor takes the whole node: run alone
    run_dir = workdir / "preempted"
    # a 5-minute limit: submitit's own wall-time guess calls any signal to it a timeout
    submit(workdir, run_dir, "--step-delay-s", "0.05", "--time-min", "5", "--signal-delay-s", "60")
    wait_for(lambda: training(run_dir, 0, past_step=0), "segment 0 to train")
    urgent = subprocess.run(
        ["sbatch", "--parsable", "-p", "urgent", "--exclusive", "-o", str(workdir / "urgent.out"), "--wrap", "sleep 3"],
        capture_output=True, text=True, env=clean_env(), check=True,
    )  # fmt: skip
    data = wait_for_end(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["preempted", "completed"]
    assert data["segments"][0]["signal"] == "SIGUSR2"
    assert data["requeues"] == {"timeout": 0, "preempted": 1}
    log = (run_dir / "logs" / f"{job_id(run_dir)}_0_log.out").read_text()
    assert "this job is timed-out" in log  # submitit's guess, overruled by what Slurm says
    sacct = subprocess.run(
        ["sacct", "-n", "-X", "-j", urgent.stdout.strip(), "-o", "State"],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    assert "COMPLETED" in sacct.stdout
    assert_resumed_exactly(run_dir, reference)


# -- after the preemption test, alone on the node: a user's own script, then two ranks ---------------

SCRIPT = REPO / "examples" / "train_script.py"


def reference_run(script: Path, run_dir: Path, workdir: Path, *args: str) -> None:
    """The script run uninterrupted as a plain process: what the scheduled run must end bit-identical to."""
    done = subprocess.run(
        [sys.executable, str(script), *args], cwd=workdir, capture_output=True, text=True, timeout=300,
        env=clean_env(TRM_CLUSTER_RUN_DIR=str(run_dir), WANDB_MODE="offline"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_own_script_preempted_on_demand_requeues_and_ends_bit_identical(workdir: Path) -> None:
    """``submit --script``: the example researcher script (StatefulDataLoader with 2 workers, EMA,
    cosine, a final eval) is preempted with ``python -m trm_cluster.preempt``, requeued by Slurm, exact."""
    steps, reference = 200, workdir / "script-reference"
    reference_run(SCRIPT, reference, workdir, "--max-steps", str(steps), "--out", str(workdir / "ref.pt"))
    run_dir = workdir / "script"
    submitted = cli(
        "submit", "--script", str(SCRIPT), *SLURM[:-1], "2", "--wandb-mode", "offline", "--run-dir", str(run_dir),
        "--checkpoint-every", "50", "--script-args", "--max-steps", str(steps), "--out", str(workdir / "final.pt"),
        "--sleep-per-step", "0.06", cwd=workdir,  # 150 steps (9 s) left after the checkpoint awaited
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    wait_for(lambda: training(run_dir, 0, past_step=0), "segment 0 to train")
    preempted = cli("preempt", str(run_dir), cwd=workdir)
    assert preempted.returncode == 0, preempted.stdout + preempted.stderr
    data = wait_for_end(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["preempted", "completed"], data["segments"]
    first, second = data["segments"]
    assert first["job_id"] == second["job_id"] and second["restart_count"] == first["restart_count"] + 1
    assert second["start_step"] == first["end_step"] >= 50
    assert_same_training_state(reference, run_dir, ignore=("meta.config", "meta.workload"))
    # the model the script saved after its loop (torch.save's archive names differ with the file name)
    ref, final = (torch.load(workdir / name, weights_only=True) for name in ("ref.pt", "final.pt"))
    assert_same_state(ref, final)
    assert_one_continuous_wandb_run(run_dir, list(range(10, steps + 1, 10)))
    log = "".join(p.read_text() for p in (run_dir / "logs").glob("*_log.out"))
    assert log.count("final evaluation:") == 1


def test_a_hung_step_then_preempted_requeues_the_same_job_within_the_grace(workdir: Path) -> None:
    """The script hangs at step HANG (after a checkpoint); ``preempt`` asks it to stop; the step boundary
    never comes: the watchdog logs the stacks, records ``hung`` and has Slurm requeue the same job, which
    resumes from the checkpoint and ends bit-identical to a run that never hung."""
    script, reference = workdir / "hang.py", workdir / "hang-reference"
    script.write_text(HANG_SCRIPT)
    reference_run(script, reference, workdir)
    run_dir, marker = workdir / "hang", workdir / "stuck"
    submitted = cli(
        "submit", "--script", str(script), *SLURM, "--wandb-mode", "offline", "--run-dir", str(run_dir),
        "--stop-grace-s", "3", "--script-args", "--hang-at", str(HANG), "--marker", str(marker), cwd=workdir,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    wait_for(lambda: Path(f"{marker}.0").exists(), "the script to reach its hang")
    preempted = cli("preempt", str(run_dir), cwd=workdir)
    assert preempted.returncode == 0, preempted.stdout + preempted.stderr
    data = wait_for_end(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["hung", "completed"], data["segments"]
    hung, resumed = data["segments"]
    assert hung["job_id"] == resumed["job_id"] and resumed["restart_count"] == hung["restart_count"] + 1
    assert hung["failed_step"] == HANG and resumed["start_step"] == HANG_EVERY
    assert "--stop-grace-s 3 of SIGUSR2" in hung["message"]
    log = "".join(p.read_text() for p in (run_dir / "logs").glob("*_log.err"))
    assert f'File "{script}", line {SLEEP_LINE} in <module>' in log
    assert_same_training_state(reference, run_dir, ignore=("meta.config", "meta.workload"))
    assert_one_continuous_wandb_run(run_dir, list(range(1, HANG_STEPS + 1)))


def test_a_sweep_is_one_array_whose_preempted_element_alone_requeues(workdir: Path) -> None:
    """``--sweep lr=...``: two elements in one job array (ids A_0, A_1). USR2 to element 0 requeues only
    it (submitit requeues A_0, not A); both complete, each one W&B run, grouped by the sweep's name."""
    sweep_dir, steps = workdir / "sweep", 60
    submitted = cli(
        "submit", "--preset", "regression", "--wandb-mode", "offline", "--steps", str(steps),
        "--checkpoint-every", "20", "--step-delay-s", "0.05", *SLURM, "--run-dir", str(sweep_dir),
        "--name", "sw", "--sweep", "lr=0.01,0.02", cwd=workdir,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    first, second = sweep_dir / "lr=0.01", sweep_dir / "lr=0.02"
    array = job_id(first).partition("_")[0]
    assert (job_id(first), job_id(second)) == (f"{array}_0", f"{array}_1")
    wait_for(lambda: training(first, 0) and training(second, 0, past_step=-1), "both elements to train")
    subprocess.run(["scancel", "--signal=USR2", job_id(first)], env=clean_env(), check=True)
    ends = {run.name: wait_for_end(run) for run in (first, second)}
    assert [s["end_reason"] for s in ends["lr=0.01"]["segments"]] == ["preempted", "completed"]
    assert [s["end_reason"] for s in ends["lr=0.02"]["segments"]] == ["completed"]
    records = subprocess.run(
        ["sacct", "-n", "-X", "-D", "-j", array, "-o", "JobID,State"],
        capture_output=True, text=True, env=clean_env(), check=True,
    ).stdout.split()  # fmt: skip
    assert records.count(f"{array}_0") == 2 and records.count(f"{array}_1") == 1, records
    ids = set()
    for run, data in ends.items():
        segments = assert_one_continuous_wandb_run(sweep_dir / run, list(range(5, steps + 1, 5)))
        assert {s.group for s in segments if s.run_id} == {"sw"}
        ids.add(data["wandb"]["run_id"])
    assert len(ids) == 2
    shown = cli("status", str(sweep_dir), cwd=workdir)
    assert f"slurm array job {array}" in shown.stdout and "lr=0.02  completed" in shown.stdout, shown.stdout


@pytest.fixture(scope="module")
def two_rank_reference(workdir: Path) -> Path:
    """Two ranks uninterrupted, on the local executor (the executor and the node layout do not change
    the math): the reference of every two-rank Slurm run below."""
    reference = workdir / "ranks-reference"
    done = cli(
        "submit", *RUN, "--tasks-per-node", "2", "--executor", "local", "--wait", "--run-dir", str(reference),
        cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return reference


def assert_two_ranks_resumed_exactly(run_dir: Path, reference: Path) -> None:
    assert_resumed_exactly(run_dir, reference)
    (expected,), (actual,) = (manifest(r)["checkpoints"][-1]["parts"] for r in (reference, run_dir))
    load = torch.load
    rank1 = [load(r / p["file"], weights_only=True) for r, p in ((reference, expected), (run_dir, actual))]
    assert_same_state(*rank1, ignore=("meta.run_uid",))
    assert len(wandb_history(run_dir)) == 2  # rank 0 alone talks to W&B


def test_two_ranks_stop_together_requeue_and_end_bit_identical(
    workdir: Path, two_rank_reference: Path
) -> None:
    """``--tasks-per-node 2`` (gloo): both tasks get the USR2 (scancel reaches every srun task), agree to
    stop after the same step, rank 0 requeues the job; exact against the same two ranks uninterrupted."""
    run_dir = workdir / "ranks"
    # the delay keeps the job running past the signal: 350 steps of 0.05 s after the first checkpoint
    submit(workdir, run_dir, "--tasks-per-node", "2", "--step-delay-s", "0.05")
    wait_for(lambda: training(run_dir, 0, past_step=0), "segment 0 to train")
    subprocess.run(["scancel", "--signal=USR2", job_id(run_dir)], env=clean_env(), check=True)
    data = wait_for_end(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["preempted", "completed"], data["segments"]
    assert_two_ranks_resumed_exactly(run_dir, two_rank_reference)


def test_status_shows_a_pending_jobs_live_state_then_its_accounting_record(workdir: Path) -> None:
    """squeue while the job waits (its reason, time left), sacct once it left the queue; a --resume while
    it waits is refused with the scancel to use (a second job would train the run twice). The job waits
    for a begin time an hour away, so it holds no CPU beside the other tests. The status is read in this
    process (real squeue and sacct calls; a subprocess per poll would import torch each time)."""
    from trm_cluster.ops.report import render, run_status

    run_dir = workdir / "pending"
    submit(workdir, run_dir, "--no-wandb", "--sbatch", "begin=now+1hour")
    jid = job_id(run_dir)
    try:
        shown = run_status(run_dir)
        queue = shown["queue"]
        assert queue is not None, shown["queue_error"]
        assert (queue["job_id"], queue["state"], queue["reason"], queue["source"]) == (
            jid, "PENDING", "BeginTime", "squeue"
        )  # fmt: skip
        assert queue["time_left"] and queue["nodes"] is None
        assert f"slurm: job {jid} PENDING (BeginTime)" in render(shown)
        before = (run_dir / "manifest.json").read_bytes()
        again = cli("submit", "--resume", str(run_dir), *SLURM, cwd=workdir)  # squeue: the job still waits
        assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stdout + again.stderr
        assert (
            f"run is still active (job {jid}" in again.stderr
            and f"cancel it first with: scancel {jid}" in again.stderr
        )
        assert (run_dir / "manifest.json").read_bytes() == before  # refused before any sbatch
    finally:
        subprocess.run(["scancel", jid], env=clean_env(), check=False)
    wait_for(lambda: not _squeue(jid), f"job {jid} to leave the queue", 60)
    wait_for(lambda: (run_status(run_dir)["queue"] or {}).get("source") == "sacct", "sacct's record", 60)
    queue = run_status(run_dir)["queue"]
    assert queue["state"].startswith("CANCELLED") and queue["job_id"] == jid
