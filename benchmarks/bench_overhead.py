"""The wrapper's overhead per step: a preset's trainer bare (throughput.py's loop) vs the same steps
through the job (TrainingJob through the session, in this process; W&B disabled, no periodic save,
so only the per-step path is compared). The job's time per step is its own measurement of the loop
(``trainer/steps_per_s`` of its last row), without the one-off costs of opening and closing."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import throughput
from figures import Figure, figure, interleaved, ratios
from overhead import run_segment
from support_checkpoint import newest_payload

from trm_cluster.core.config import RunConfig
from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.core.workload import dataclass_from_dict
from trm_cluster.launch.presets import load_preset
from trm_cluster.rundir.creation import create_run


def measure(root: Path, preset_name: str, steps: int, repeats: int) -> list[Figure]:
    preset = load_preset(preset_name)
    serial = itertools.count()

    def bare() -> float:
        return 1.0 / throughput.measure(preset_name, warmup=0, steps=steps).steps_per_s

    def job() -> float:
        run = dataclass_from_dict(RunConfig, preset.run)
        run = dataclasses.replace(run, steps=steps, checkpoint_every=0, eval_every=0, log_every=steps)
        run_dir = root / f"overhead-{preset_name}-{next(serial)}"
        config = {"run": dataclasses.asdict(run), "job": dict(preset.job)}
        create_run(run_dir, run_dir.name, preset.workload, config, WandbOptions(mode="disabled"), 3, {})
        run_segment(run_dir)
        rows = newest_payload(run_dir)["tracking"]["journal"]["rows"]
        return 1.0 / float(rows[-1]["metrics"]["trainer/steps_per_s"])

    results = interleaved({"bare": bare, "job": job}, repeats)
    extra = [1e6 * (j - b) for j, b in zip(results["job"], results["bare"], strict=True)]
    return [
        figure(f"step, {preset_name}: bare loop", [1e3 * t for t in results["bare"]], "ms/step"),
        figure(
            f"step, {preset_name}: through the job",
            [1e3 * t for t in results["job"]],
            "ms/step",
            "W&B disabled, no periodic save",
        ),
        figure(
            f"wrapper overhead, {preset_name}: job / bare",
            ratios(results["job"], results["bare"]),
            "x",
            target=("<=", 1.01),
        ),
        figure(f"wrapper overhead, {preset_name}: extra per step", extra, "us/step"),
    ]
