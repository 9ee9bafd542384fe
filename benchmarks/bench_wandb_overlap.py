"""Does starting W&B while the checkpoint loads shorten a resume? A B A B: the same preemption and
requeue (bench_requeue.one_preemption, W&B offline), the requeued process starting W&B serially (A,
``TRM_CLUSTER_SERIAL_WANDB_INIT=1``) or on its own thread during the load (B, the default); its own
measurements compared (process start to the first step; load + the W&B wait that the load did not hide).

Usage: python benchmarks/bench_wandb_overlap.py [--megabytes 100] [--pairs 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_requeue import one_preemption
from figures import Figure, figure, ratios, table

from trm_cluster.wandb.tracker import SERIAL_INIT_ENV


def measure(root: Path, megabytes: float, pairs: int) -> list[Figure]:
    runs: dict[str, list[dict[str, float]]] = {"serial": [], "overlapped": []}
    for pair in range(pairs):
        for variant in ("serial", "overlapped"):  # A B A B
            os.environ[SERIAL_INIT_ENV] = "1" if variant == "serial" else "0"
            _, _, data = one_preemption(root, megabytes, "offline", 2 * pair + (variant == "overlapped"))
            runs[variant].append(data.segments[1].timings.measured())
    os.environ.pop(SERIAL_INIT_ENV, None)
    figures: list[Figure] = []
    for key, what in (("first_step_s", "process start to the first step"),
                      ("load_s", "checkpoint load"),
                      ("wandb_init_s", "W&B wait past the load")):  # fmt: skip
        for variant, timings in runs.items():
            figures.append(figure(f"resume {megabytes:g} MB, W&B {variant}: {what}",
                                  [1e3 * t[key] for t in timings], "ms"))  # fmt: skip
    first = {variant: [t["first_step_s"] for t in timings] for variant, timings in runs.items()}
    figures.append(figure(f"resume {megabytes:g} MB: first step, overlapped / serial",
                          ratios(first["overlapped"], first["serial"]), "x", "per pair, A B A B"))  # fmt: skip
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--megabytes", type=float, default=100)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="trm-wandb-overlap-") as root:
        print(table(measure(Path(root), args.megabytes, args.pairs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
