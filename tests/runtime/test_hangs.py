"""A step that never returns does not strand the run (runtime/watchdog.py): real processes, real signals,
submitit's local executor, W&B offline files read back.

The script hangs at step HANG (``time.sleep`` for an hour) in its first attempt only (a marker file per
rank), or in every attempt (``--always``): the watchdog dumps every thread's stack to the log, records
the segment as ``hung`` and leaves; the run is requeued from its last checkpoint and ends bit-identical
to a run that never hung."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hang_script import EVERY, HANG, SCRIPT, SLEEP_LINE, STEPS
from support import (
    assert_one_continuous_wandb_run,
    assert_same_training_state,
    clean_env,
    cli,
    manifest,
    open_segment_pid,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hang") / "train.py"
    path.write_text(SCRIPT)
    return path


@pytest.fixture(scope="module")
def reference(script: Path) -> Path:
    """The script once, uninterrupted and never hung (``python train.py``)."""
    run_dir = script.parent / "reference"
    done = subprocess.run(
        [sys.executable, str(script)], cwd=script.parent, capture_output=True, text=True, timeout=300,
        env=clean_env(TRM_CLUSTER_RUN_DIR=str(run_dir), WANDB_MODE="offline"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return run_dir


def _submit(script: Path, run_dir: Path, *flags: str, script_args: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable, "-m", "trm_cluster.submit", "--script", str(script), "--executor", "local", "--wait",
        "--wandb-mode", "offline", "--run-dir", str(run_dir), *flags, "--script-args", *script_args,
    ]  # fmt: skip


def _log(run_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted((run_dir / "logs").glob("*_log.err")))


def _assert_hung_once_then_exact(run_dir: Path, reference: Path, script: Path, limit: str) -> None:
    data = manifest(run_dir)
    hung, resumed = data["segments"]
    assert hung["end_reason"] == "hung" and hung["failed_step"] == HANG, hung
    assert limit in hung["message"] and "hung on rank 0" in hung["message"]
    assert resumed["start_step"] == EVERY and resumed["end_reason"] == "completed"
    assert data["status"] == "completed" and data["checkpoints"][-1]["step"] == STEPS
    log = _log(run_dir)
    assert f"hung: step {HANG} did not return within {limit}" in log
    assert f'File "{script}", line {SLEEP_LINE} in <module>' in log  # the stuck frame: the script's sleep
    assert_same_training_state(reference, run_dir, ignore=("meta.config", "meta.workload"))
    assert_one_continuous_wandb_run(run_dir, list(range(1, STEPS + 1)))


def test_a_hung_step_then_preempted_is_requeued_within_the_grace_and_ends_bit_identical(
    script: Path, reference: Path, workdir: Path
) -> None:
    run_dir, marker = workdir / "run", workdir / "stuck"
    args = ("--hang-at", str(HANG), "--marker", str(marker))
    with subprocess.Popen(
        _submit(script, run_dir, "--stop-grace-s", "2", script_args=args), cwd=workdir, env=clean_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as submit:  # fmt: skip
        pid = open_segment_pid(run_dir)
        wait_for(lambda: Path(f"{marker}.0").exists(), what="the script never reached its hang")
        asked = time.time()
        os.kill(pid, signal.SIGUSR2)  # the preemption's warning: the step boundary never comes
        wait_for(
            lambda: manifest(run_dir)["segments"][0]["end_reason"] == "hung", what="never recorded as hung"
        )
        recorded_s = time.time() - asked
        out, err = submit.communicate(timeout=300)
    assert submit.returncode == 0, out + err
    assert recorded_s < 30, recorded_s  # a bound for a loaded machine, not a benchmark: the grace is 2 s
    _assert_hung_once_then_exact(run_dir, reference, script, "--stop-grace-s 2 of SIGUSR2")


def test_a_hung_step_with_no_signal_is_retried_after_the_step_timeout_and_ends_bit_identical(
    script: Path, reference: Path, workdir: Path
) -> None:
    run_dir = workdir / "run"
    args = ("--hang-at", str(HANG), "--marker", str(workdir / "stuck"), "--final-eval-s", "7")
    flags = ("--step-timeout-s", "5")  # above a loaded machine's first step (its optimizer imports)
    done = cli("submit", *_submit(script, run_dir, *flags, script_args=args)[3:], cwd=workdir, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    # the final evaluation took longer than the step timeout, after the loop: not a hang
    _assert_hung_once_then_exact(run_dir, reference, script, "--step-timeout-s 5")


def test_the_same_hang_at_every_attempt_stops_the_run_as_failed_after_the_retry_budget(
    script: Path, workdir: Path
) -> None:
    run_dir = workdir / "run"
    args = ("--hang-at", str(HANG), "--marker", str(workdir / "stuck"), "--always")
    flags = ("--step-timeout-s", "5", "--max-failures", "2")
    done = cli("submit", *_submit(script, run_dir, *flags, script_args=args)[3:], cwd=workdir, timeout=300)
    assert done.returncode != 0
    data = manifest(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["hung", "hung"]
    assert data["status"] == "failed"
    assert (
        f"step {HANG} failed 2 time(s) in a row: not retried (--max-failures 2)"
        in data["segments"][-1]["message"]
    )
    status = cli("status", str(run_dir), cwd=workdir)
    assert "failed" in status.stdout and "hung" in status.stdout, status.stdout


def test_one_rank_hung_ends_both_and_the_run_resumes_exactly(script: Path, workdir: Path) -> None:
    run_dir, marker = workdir / "run", workdir / "stuck"
    args = ("--hang-at", str(HANG), "--marker", str(marker), "--rank", "1")
    flags = ("--tasks-per-node", "2", "--step-timeout-s", "6")
    done = cli("submit", *_submit(script, run_dir, *flags, script_args=args)[3:], cwd=workdir, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    data = manifest(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["hung", "completed"]
    assert data["segments"][1]["start_step"] == EVERY and data["checkpoints"][-1]["step"] == STEPS
    # rank 1 hung in its step, rank 0 in the stop all-reduce that waits for it: the segment names both
    assert sorted(data["segments"][0]["hangs"]) == [
        f"rank 0: the boundary after step {HANG} (waiting on the other ranks) did not pass within --step-timeout-s 6",
        f"rank 1: step {HANG} did not return within --step-timeout-s 6",
    ]
    log = _log(run_dir)  # and both stacks are logged
    assert f"hung: step {HANG} did not return" in log and f"hung: the boundary after step {HANG}" in log
    assert f'File "{script}", line {SLEEP_LINE} in <module>' in log
    assert "all_reduce" in log  # rank 0's stack: the collective it waited in


WORKER_SCRIPT = """
import os, time, torch, trm_cluster
from torchdata.stateful_dataloader import StatefulDataLoader

class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        for i in range(1000):
            if i == 6 and not os.path.exists("stuck"):
                open("stuck", "w").close()
                time.sleep(3600)  # a worker stuck (a file system that stops answering)
            yield torch.tensor([float(i)])

loader = StatefulDataLoader(Stream(), batch_size=1, num_workers=1, generator=torch.Generator().manual_seed(0),
                            worker_init_fn=trm_cluster.ignore_stop_signals)
model = torch.nn.Linear(1, 1)
with trm_cluster.session(steps=10, checkpoint_every=3, log_every=1, step_timeout_s=5) as run:
    run.restore(model=model, data=loader)
    batches = iter(loader)
    for step in run.steps():
        model(next(batches)).sum().backward()
print("after the loop at step", run.step, flush=True)
"""


def test_a_stuck_loader_worker_is_a_hung_step_with_the_workers_state_in_the_log(workdir: Path) -> None:
    (workdir / "train.py").write_text(WORKER_SCRIPT)
    env = clean_env(TRM_CLUSTER_RUN_DIR=str(workdir / "run"), WANDB_MODE="disabled")
    first = subprocess.run([sys.executable, "train.py"], cwd=workdir, env=env, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert first.returncode == 75, first.stdout + first.stderr  # run it again to resume, as a stop says
    assert "hung: step 6 did not return within --step-timeout-s 5" in first.stderr
    assert "in __next__" in first.stderr  # the main thread waits on the loader's next batch
    assert "[trm_cluster] child process " in first.stderr and "): sleeping" in first.stderr  # the worker
    second = subprocess.run([sys.executable, "train.py"], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stdout + second.stderr
    assert "after the loop at step 10" in second.stdout
    segments = manifest(workdir / "run")["segments"]
    assert [s["end_reason"] for s in segments] == ["hung", "completed"] and segments[1]["start_step"] == 6
