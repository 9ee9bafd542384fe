"""What the orchestration costs, side by side with the bare alternatives, in one run.

- training: the bare loop (trainer.train_step only) vs the same steps through the job (manifest, signal
  handling, periodic checkpoints; W&B disabled, then offline);
- checkpoint save: CheckpointStore.save (atomic write + sha256 + fsync + manifest publish) vs plain
  torch.save vs the disk's raw write of the same bytes with fsync;
- stop latency: from a USR2 to the segment closed in the manifest (state saved, W&B finished);
- resume latency: building the trainer and loading the newest verified checkpoint.

Usage: python benchmarks/overhead.py [--steps 300]. Figures vary with the machine's load; read the ratios.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import torch

from trm_cluster.core.config import RunConfig
from trm_cluster.core.job_context import JobContext
from trm_cluster.core.rng import seed_everything
from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.core.workload import TrainContext
from trm_cluster.launch.runs import resolved_config
from trm_cluster.rundir.checkpoints import CheckpointStore
from trm_cluster.rundir.creation import create_run
from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.runtime.plan import SegmentEnded, SessionPlan
from trm_cluster.runtime.session import Session
from trm_cluster.scheduler.job import TrainingJob
from trm_cluster.scheduler.trainer_segment import build_trainer
from trm_cluster.workloads.regression import REGRESSION, RegressionConfig

WORKLOAD = "trm_cluster.workloads.regression:REGRESSION"


def new_run(root: Path, name: str, steps: int, mode: str, checkpoint_every: int = 100) -> Path:
    run = RunConfig(steps=steps, checkpoint_every=checkpoint_every, log_every=10, keep_checkpoints=2)
    config = resolved_config(run, RegressionConfig(hidden=256))
    run_dir = root / name
    create_run(run_dir, name, WORKLOAD, config, WandbOptions(mode=mode), max_requeues=3, launch={})
    return run_dir


def bare_loop(steps: int) -> float:
    seed_everything(0)
    trainer = REGRESSION.build(RegressionConfig(hidden=256), TrainContext(0, steps, Path(".")))
    start = time.perf_counter()
    for step in range(steps):
        trainer.train_step(step)
    return time.perf_counter() - start


def run_segment(run_dir: Path) -> None:
    """One segment of the job's own path (TrainingJob through the session), in this process."""
    TrainingJob(run_dir, quiet=True).run_segment(SessionPlan(run_dir, JobContext.detect(), quiet=True))


def through_job(root: Path, name: str, steps: int, mode: str) -> float:
    run_dir = new_run(root, name, steps, mode)
    start = time.perf_counter()
    run_segment(run_dir)
    return time.perf_counter() - start


def save_figures(root: Path, megabytes: int) -> tuple[float, float, float]:
    state = {"model": {"w": torch.randn(megabytes * 262_144)}, "trainer": {}, "meta": {"run_uid": "x"}}
    run_dir = new_run(root, f"save{megabytes}", 10, "disabled")
    store = CheckpointStore(RunManifest(run_dir), keep_last=2)
    start = time.perf_counter()
    store.save(1, state)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    torch.save(state, root / f"plain{megabytes}.pt")
    plain = time.perf_counter() - start
    data = (root / f"plain{megabytes}.pt").read_bytes()
    start = time.perf_counter()
    with open(root / f"raw{megabytes}.bin", "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    raw = time.perf_counter() - start
    return ours, plain, raw


def stop_latency(root: Path) -> float:
    run_dir = new_run(root, "stop", 10**7, "offline", checkpoint_every=0)
    manifest = RunManifest(run_dir)
    sent: list[float] = []

    def preempt_once_training() -> None:
        while not manifest.read().wandb.started:
            time.sleep(0.05)
        time.sleep(0.5)
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGUSR2)

    threading.Thread(target=preempt_once_training, daemon=True).start()
    try:
        run_segment(run_dir)
    except SegmentEnded as ended:
        ended.signals.restore()
    return time.perf_counter() - sent[0]


def resume_latency(root: Path) -> float:
    """The job's own resume path: open the segment, build the trainer, verify and load the newest
    checkpoint, restore RNG (W&B is resumed too: the run is offline)."""
    run_dir = root / "stop"
    data = RunManifest(run_dir).read()
    start = time.perf_counter()
    with Session(SessionPlan(run_dir, JobContext.detect(), quiet=True)) as run:
        step = run.restore_trainer(build_trainer(data.workload, data.config["job"], run))
        elapsed = time.perf_counter() - start
        for _ in run.steps():
            break  # ends this benchmark's run here
    assert step > 0
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    steps = parser.parse_args().steps
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare = bare_loop(steps)
        job = through_job(root, "job", steps, "disabled")
        job_wandb = through_job(root, "job-wandb", steps, "offline")
        print(f"training {steps} steps (regression example, hidden 256, checkpoint every 100)")
        print(f"  {'bare loop':<34}{bare:8.2f} s   {steps / bare:8.0f} steps/s   1.00x")
        print(
            f"  {'through the job, W&B disabled':<34}{job:8.2f} s   {steps / job:8.0f} steps/s   {job / bare:.2f}x"
        )
        print(f"  {'through the job, W&B offline':<34}{job_wandb:8.2f} s   {steps / job_wandb:8.0f} steps/s   "
              f"{job_wandb / bare:.2f}x  (includes wandb.init and finish)")  # fmt: skip
        print("checkpoint save: ours (atomic + sha256 + fsync + manifest) | torch.save | raw write + fsync")
        for megabytes in (1, 64):
            ours, plain, raw = save_figures(root, megabytes)
            print(f"  {megabytes:>4} MB   {ours * 1e3:8.1f} ms | {plain * 1e3:8.1f} ms | {raw * 1e3:8.1f} ms"
                  f"   ours / torch.save = {ours / plain:.2f}x")  # fmt: skip
        print(f"USR2 -> segment closed (saved, W&B finished): {stop_latency(root) * 1e3:.0f} ms")
        print(f"resume: segment opened, trainer built, newest checkpoint verified and loaded, W&B resumed: "
              f"{resume_latency(root) * 1e3:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
