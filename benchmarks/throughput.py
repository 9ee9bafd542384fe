"""Training throughput of peptide-trm presets on this machine, side by side.

Builds each preset's trainer through its Workload (as the job would), runs a few warm-up steps,
then times ``--steps`` steps. Usage: ``python benchmarks/throughput.py [--presets tiny mid]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trm_cluster.core.workload import TrainContext, load_workload
from trm_cluster.launch.presets import load_preset


@dataclass(frozen=True)
class Measurement:
    preset: str
    parameters: int
    batch_size: int
    steps_per_s: float
    spectra_per_s: float


def measure(preset_name: str, warmup: int, steps: int) -> Measurement:
    preset = load_preset(preset_name)
    workload = load_workload(preset.workload)
    config = workload.config_from_dict(preset.job)
    seed = int(preset.run.get("seed", 0))
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as run_dir:
        context = TrainContext(
            seed=seed, total_steps=int(preset.run.get("steps", 1000)), run_dir=Path(run_dir)
        )
        trainer = workload.build(config, context)
        for step in range(warmup):
            trainer.train_step(step)
        started = time.perf_counter()
        for step in range(warmup, warmup + steps):
            trainer.train_step(step)
        elapsed = time.perf_counter() - started
    model = getattr(trainer, "model", None)
    parameters = sum(p.numel() for p in model.parameters()) if isinstance(model, torch.nn.Module) else 0
    batch = int(getattr(config, "batch_size", 0))
    return Measurement(preset_name, parameters, batch, steps / elapsed, steps * batch / elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--presets", nargs="+", default=["tiny", "mid"])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {device}, torch {torch.__version__}")
    results = [measure(name, args.warmup, args.steps) for name in args.presets]
    print(f"{'preset':<18}{'params':>10}{'batch':>7}{'steps/s':>10}{'spectra/s':>11}")
    for r in results:
        print(
            f"{r.preset:<18}{r.parameters:>10,}{r.batch_size:>7}{r.steps_per_s:>10.2f}{r.spectra_per_s:>11.0f}"
        )


if __name__ == "__main__":
    main()
