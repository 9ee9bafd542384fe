"""A real preemption through submitit's local executor, against the state's size: USR2 to the job's
process gone with the requeue issued (the stop's save, W&B finish, manifest, submitit's hand-over), the
steps lost (must be 0), and the requeued process's resume latency split from its own measurements
(process start to session, manifest, checkpoint load, W&B init, first step; Segment.timings)."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path

from figures import Figure, figure

from trm_cluster.core.config import RunConfig
from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.launch.runs import resolved_config, submit
from trm_cluster.rundir.creation import create_run
from trm_cluster.rundir.manifest import ManifestData, RunManifest
from trm_cluster.scheduler.executors import ExecutorOptions
from trm_cluster.workloads.regression import RegressionConfig

WORKLOAD = "trm_cluster.workloads.regression:REGRESSION"
BYTES_PER_HIDDEN = 4 * 4 * (16 + 2)
"""float32 model, EMA and AdamW's two moments of a Linear(16, h) + Linear(h, 1) regression model."""
STEPS, EVERY = 60, 20


def _wait(predicate: object, what: str, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.005)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def one_preemption(
    root: Path, megabytes: float, wandb_mode: str, serial: int
) -> tuple[float, float, ManifestData]:
    """(USR2 to the process gone, USR2 to its segment closed in the manifest, the manifest at the end)."""
    run_dir = root / f"requeue-{megabytes:g}mb-{serial}"
    hidden = max(int(megabytes * 2**20 / BYTES_PER_HIDDEN), 8)
    run = RunConfig(steps=STEPS, checkpoint_every=EVERY, log_every=10, keep_checkpoints=2)
    config = resolved_config(run, RegressionConfig(hidden=hidden, step_delay_s=0.02))
    create_run(
        run_dir, run_dir.name, WORKLOAD, config, WandbOptions(mode=wandb_mode), 3, {"signal_delay_s": 120}
    )
    submission = submit(run_dir, "local", ExecutorOptions(executor="local", time_min=60))
    manifest = RunManifest(run_dir)
    _wait(lambda: manifest.read().checkpoints, "the first checkpoint")
    pid = manifest.read().segments[0].pid
    sent, sent_at = time.perf_counter(), time.time()
    os.kill(pid, signal.SIGUSR2)
    _wait(lambda: not _alive(pid), "the signalled process to exit")
    to_exit = time.perf_counter() - sent
    _wait(submission.job.done, "the requeued job to complete")
    data = manifest.read()
    if [s.end_reason for s in data.segments] != ["preempted", "completed"] or data.requeues["preempted"] != 1:
        raise RuntimeError(
            f"{run_dir}: not one preemption then completion: {[s.end_reason for s in data.segments]}"
        )
    closed = datetime.fromisoformat(data.segments[0].end_time or "").timestamp() - sent_at
    return to_exit, closed, data


def measure(root: Path, sizes_mb: list[float], wandb_mode: str, repeats: int) -> list[Figure]:
    figures: list[Figure] = []
    resumes: list[ManifestData] = []
    for megabytes in sizes_mb:
        exits, closes, saves, lost = [], [], [], []
        for serial in range(repeats):
            to_exit, closed, data = one_preemption(root, megabytes, wandb_mode, serial)
            stopped, resumed = data.segments
            exits.append(to_exit)
            closes.append(closed)
            saves.append(stopped.timings.sync_save_s or 0.0)  # the stop's save: its one synchronous save
            lost.append(float((stopped.end_step or 0) - resumed.start_step))
            resumes.append(data)
        size = f"{data.checkpoints[-1].bytes / 2**20:.1f} MB state"
        figures += [
            figure(
                f"USR2 to process exit, requeue issued ({size})",
                [1e3 * t for t in exits],
                "ms",
                "step + save + W&B finish + manifest + submitit hand-over",
            ),
            figure(
                f"USR2 to segment closed ({size})",
                [1e3 * t for t in closes],
                "ms",
                "step + save + W&B finish + manifest (the segment's end_time, ms resolution)",
            ),
            figure(f"the stop's synchronous save ({size})", [1e3 * t for t in saves], "ms"),
            figure(
                f"USR2 to exit minus (save + 1 s) ({size})",
                [1e3 * (t - s - 1.0) for t, s in zip(exits, saves, strict=True)],
                "ms",
                target=("<=", 0),
            ),
            figure(f"steps lost at the preemption ({size})", lost, "steps", target=("<=", 0)),
        ]
    parts = ("imports_s", "manifest_s", "load_s", "wandb_init_s", "first_step_s")
    timings = [data.segments[1].timings.measured() for data in resumes]
    names = {
        "imports_s": "process start to session opened (interpreter, imports)",
        "manifest_s": "manifest +",
        "load_s": "checkpoint load (verify + torch.load + restore)",
        "wandb_init_s": f"W&B init ({wandb_mode})",
        "first_step_s": "process start to the first step",
    }
    names["manifest_s"] = "manifest read, segment opened, orphans removed"
    for part in parts:
        figures.append(
            figure(
                f"resume: {names[part]}",
                [1e3 * t[part] for t in timings],
                "ms",
                "the requeued process's own measurement",
            )
        )
    rest = [t["first_step_s"] - sum(t[p] for p in parts[:-1]) for t in timings]
    figures.append(
        figure(
            "resume: the rest (the trainer built: its imports, data, model, optimizer)",
            [1e3 * r for r in rest],
            "ms",
            "first step minus the parts above",
        )
    )
    beyond = [t["first_step_s"] - t["imports_s"] - t["load_s"] for t in timings]
    figures.append(
        figure(
            "resume: first step minus (imports + load)", [1e3 * b for b in beyond], "ms", target=("<=", 2000)
        )
    )
    return figures
