"""peptide-trm on two gloo ranks (real torch.distributed, two spawned processes): each rank trains its
share of the same global batch, the gradients are averaged, and a save and load in the middle (shared
state once, each rank's carry and RNG as its own part) continues exactly."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support import free_port
from trm_testing import small_config

from trm_cluster.core.rng import capture_rng, restore_rng
from trm_cluster.core.workload import TrainContext
from trm_cluster.workloads.trm import PEPTIDE_TRM

STEPS, CUT = 8, 3


def _build(rank: int, tmp: Path):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    context = TrainContext(seed=0, total_steps=STEPS, run_dir=tmp, rank=rank, world_size=2)
    return PEPTIDE_TRM.build(small_config(), context)


def _train(rank: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    straight = _build(rank, Path(tmp))
    for step in range(STEPS):
        straight.train_step(step)

    first = _build(rank, Path(tmp))
    for step in range(CUT):
        first.train_step(step)
    saved = {"shared": first.state_dict(), "own": first.rank_state_dict(), "rng": capture_rng()}
    torch.save(saved, Path(tmp) / f"rank{rank}.pt")
    loaded = torch.load(Path(tmp) / f"rank{rank}.pt", weights_only=True)
    resumed = _build(rank, Path(tmp))
    resumed.load_state_dict(loaded["shared"])
    resumed.load_rank_state_dict(loaded["own"])
    restore_rng(loaded["rng"])
    for step in range(CUT, STEPS):
        resumed.train_step(step)
    torch.save({"straight": straight.state_dict(), "resumed": resumed.state_dict(),
                "straight_own": straight.rank_state_dict(), "resumed_own": resumed.rank_state_dict()},
               Path(tmp) / f"result{rank}.pt")  # fmt: skip
    dist.destroy_process_group()


def test_two_ranks_share_the_batch_and_resume_exactly(tmp_path: Path) -> None:
    mp.spawn(_train, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"result{r}.pt", weights_only=True) for r in range(2)]
    for result in results:
        assert "carry" not in result["straight"]  # with several ranks each rank's rows are its own part
        for part in ("straight", "resumed"):
            assert result[f"{part}_own"]["carry"]["y"].shape[0] == small_config().batch_size // 2
        for key, tensor in result["straight"]["model"].items():
            assert torch.equal(tensor, result["resumed"]["model"][key]), key
        for key in ("y", "z", "steps", "halted"):
            assert torch.equal(result["straight_own"]["carry"][key], result["resumed_own"]["carry"][key]), key
    # the averaged gradients keep the two ranks' models identical
    for key, tensor in results[0]["straight"]["model"].items():
        assert torch.equal(tensor, results[1]["straight"]["model"][key]), key
    # and the ranks trained different rows of the batch
    assert not torch.equal(results[0]["straight_own"]["carry"]["y"], results[1]["straight_own"]["carry"]["y"])
