"""Every benchmark in one run: one table, and benchmarks/results.json (each figure with its unit, the
machine and the commit).

- wrapper overhead per step: a preset bare vs through the job (bench_overhead.py);
- checkpoint save and load: ours synchronous, ours in the background (stall and total), torch.save /
  torch.load, a raw write + fsync of the same bytes (bench_checkpoint.py);
- signal to requeue against state size, steps lost, and the requeued process's resume latency split
  (bench_requeue.py, submitit's local executor, real signals);
- manifest updates/s with 1, 4 and 8 concurrent writers, and lost updates (bench_manifest.py);
- the resume doctor (warm and --cold) against one uninterrupted run of the same loop (bench_doctor.py).

Run on their own: bench_sharded.py (2 gloo ranks), bench_watchdog.py, bench_wandb_overlap.py.

Variants are interleaved within each repetition (the order rotated) and ratios are taken within a
repetition; the table gives the median and [min..max]. Nothing is asserted: on a shared machine read
the ratios. ``--quick``: 10 and 100 MB checkpoints, the tiny preset, fewer repetitions; without it also
1 GB and the mid preset. ``--smoke`` (CI): tiny sizes and steps, W&B disabled, one repetition: every
figure present, none meaningful.

Usage: python benchmarks/run.py [--quick | --smoke] [--out benchmarks/results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_checkpoint
import bench_doctor
import bench_manifest
import bench_overhead
import bench_requeue
from figures import Figure, Machine, as_json, table

PLANS = {
    "smoke": {"presets": [("regression", 30)], "sizes_mb": [1], "requeue_mb": [0.1], "repeats": 1,
              "requeue_repeats": 1, "manifest_updates": 10, "wandb": "disabled",
              "doctor_loops": ["example"], "doctor_steps": 4},
    "quick": {"presets": [("tiny", 30)], "sizes_mb": [10, 100], "requeue_mb": [10], "repeats": 3,
              "requeue_repeats": 1, "manifest_updates": 50, "wandb": "offline",
              "doctor_loops": ["example", "regression"], "doctor_steps": 20},
    "full": {"presets": [("tiny", 60), ("mid", 15)], "sizes_mb": [10, 100, 1000], "requeue_mb": [10, 100],
             "repeats": 5, "requeue_repeats": 2, "manifest_updates": 100, "wandb": "offline",
             "doctor_loops": ["example", "regression", "tiny"], "doctor_steps": 20},
}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="10 and 100 MB, the tiny preset, 3 repetitions")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition (CI)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results.json")
    args = parser.parse_args()
    plan_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    plan = PLANS[plan_name]
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.set_num_threads(1)  # the CI-class machine is shared: one intra-op thread spins least
    machine, began = Machine(), time.perf_counter()
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="trm-bench-") as tmp:
        root = Path(tmp)
        for preset, steps in plan["presets"]:
            figures += bench_overhead.measure(root, preset, steps, plan["repeats"])
        for megabytes in plan["sizes_mb"]:
            figures += bench_checkpoint.measure(root, megabytes, plan["repeats"])
        figures += bench_requeue.measure(root, plan["requeue_mb"], plan["wandb"], plan["requeue_repeats"])
        figures += bench_manifest.measure(root, plan["manifest_updates"], plan["repeats"])
        figures += bench_doctor.measure(root, plan["doctor_loops"], plan["doctor_steps"], plan["repeats"])
    machine.load_at_end = os.getloadavg()
    settings = {"plan": plan_name, **plan, "wall_s": round(time.perf_counter() - began, 1)}
    print(f"trm_cluster benchmarks ({plan_name}), {machine.host}: {machine.cpus} CPUs, {machine.device}, torch "
          f"{machine.torch_version}, load {machine.load_at_start[0]:.1f} -> {machine.load_at_end[0]:.1f}, "
          f"{settings['wall_s']} s")  # fmt: skip
    print(table(figures))
    args.out.write_text(json.dumps(as_json(figures, machine, settings), indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
