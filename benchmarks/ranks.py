"""peptide-trm on 1 and 2 gloo ranks (steps/s of the same global batch), and the collective stop
check's cost per step as a fraction of a step: ``python benchmarks/ranks.py [--steps N --repeats R]``.

Each figure comes from spawned processes (real torch.distributed, gloo on the CPU); the 1-rank and
2-rank runs alternate over the repetitions and the table gives medians with their min..max. Nothing
here asserts a time: on a shared 2-core machine two ranks compete for the same cores, so the figure to
read is the stop check's share of a step, not the speed-up.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trm_cluster.core.distributed import Ranks
from trm_cluster.core.workload import TrainContext
from trm_cluster.launch.presets import load_preset
from trm_cluster.workloads.trm import PEPTIDE_TRM


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _worker(rank: int, world: int, port: int, steps: int, out: str) -> None:
    torch.set_num_threads(1)
    ranks = Ranks()
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        ranks = Ranks(rank, world, rank, owns_group=True)
    config = PEPTIDE_TRM.config_from_dict(load_preset("tiny").job)
    torch.manual_seed(0)
    trainer = PEPTIDE_TRM.build(config, TrainContext(0, steps, Path(out), rank=rank, world_size=world))
    trainer.train_step(0)  # warm-up
    started = time.perf_counter()
    for step in range(1, steps + 1):
        trainer.train_step(step)
    step_s = (time.perf_counter() - started) / steps
    started = time.perf_counter()
    for _ in range(steps * 20):
        ranks.agree(False)
    check_s = (time.perf_counter() - started) / (steps * 20)
    if rank == 0:
        Path(out, f"{world}.txt").write_text(f"{step_s} {check_s}")
    ranks.close()


def measure(world: int, steps: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world, _port(), steps, out), nprocs=world, join=True)
        step_s, check_s = map(float, Path(out, f"{world}.txt").read_text().split())
    return step_s, check_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    figures: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for world in (1, 2):
            figures[world].append(measure(world, args.steps))

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.4g} [{min(values):.4g}..{max(values):.4g}]"

    print(f"peptide-trm tiny, global batch {load_preset('tiny').job['batch_size']}, {args.steps} steps x "
          f"{args.repeats} repeats, gloo, 1 torch thread per rank")  # fmt: skip
    for world in (1, 2):
        steps_per_s = [1 / s for s, _ in figures[world]]
        print(f"  {world} rank(s): {spread(steps_per_s)} steps/s")
    step_2 = statistics.median(s for s, _ in figures[2])
    checks = [c for _, c in figures[2]]
    print(f"  stop check (all-reduce of one flag, 2 ranks): {spread([c * 1e6 for c in checks])} us per step, "
          f"{statistics.median(checks) / step_2:.2%} of a 2-rank step")  # fmt: skip


if __name__ == "__main__":
    main()
