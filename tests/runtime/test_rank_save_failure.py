"""Two gloo ranks, in a process group the script made itself and the session joined (``Ranks.setup``), save
one step from their writer threads (the background path, its own group) while the training threads keep
agreeing on the stop flag; rank 1's write fails for lack of space (RLIMIT_FSIZE in its own process: EFBIG,
as on a full disk). No rank waits for the other, nothing is published, and each rank raises: rank 1 its
own error, rank 0 one naming rank 1. Then both save the next step, which lands."""

from __future__ import annotations

import datetime
import json
import os
import resource
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support import free_port, manifest, new_run

from trm_cluster.core.distributed import Ranks
from trm_cluster.rundir.checkpoints import CheckpointStore
from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.state.background_save import BackgroundSaver
from trm_cluster.state.snapshot import stage_step, write_step

LIMIT = 4096  # bytes per file: rank 1's part (its RNG streams, ~10 kB) does not fit


def _rank(rank: int, port: int, run_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TRM_CLUSTER_COLLECTIVE_TIMEOUT_S="30")
    # the script's own process group, as a user's loop may make it: the session joins it (Ranks.setup)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30))
    ranks = Ranks.setup(rank, 2, rank)
    assert ranks.distributed and ranks.background is not None and not ranks.owns_group
    run = RunManifest(Path(run_dir))
    store = CheckpointStore(run, keep_last=3)
    shared = {"model": {"w": torch.arange(4.0)}} if ranks.is_main else None
    outcome = {}
    for step in (1, 2):
        if rank == 1:  # the disk is full for rank 1 while it writes step 1
            limit = LIMIT if step == 1 else resource.RLIM_INFINITY
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        staged = stage_step(ranks, step, shared, {"position": step}, {}, run.read(), 10)
        saver = BackgroundSaver()
        saver.start(lambda staged=staged: write_step(store, ranks.for_background_saves(), staged), 0.0)
        agreed = [ranks.agree(False) for _ in range(20)]  # the training thread's collectives meanwhile
        try:
            saver.wait()
            outcome[step] = "saved"
        except OSError as error:
            outcome[step] = f"{type(error).__name__}: {error} (errno {error.errno})"
        assert agreed == [False] * 20
    Path(run_dir, f"rank{rank}.json").write_text(json.dumps(outcome))
    dist.destroy_process_group()  # the script's own group: the script ends it


def _worker(rank: int, port: int, run_dir: str) -> None:
    try:
        _rank(rank, port, run_dir)
    except BaseException:
        Path(run_dir, f"rank{rank}.json").write_text(json.dumps({"crashed": traceback.format_exc()}))
        raise


def test_a_rank_whose_background_write_fails_stops_no_rank_and_publishes_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    new_run(run_dir)
    mp.start_processes(_worker, args=(free_port(), str(run_dir)), nprocs=2, join=True, start_method="spawn")
    rank0 = json.loads((run_dir / "rank0.json").read_text())
    rank1 = json.loads((run_dir / "rank1.json").read_text())
    assert rank1["1"].startswith("OSError: [Errno 27] File too large"), rank1  # its own error, EFBIG
    assert "step 1 was not written: rank 1: [Errno 27]" in rank0["1"], rank0  # named by the others
    assert rank0["2"] == rank1["2"] == "saved"
    (published,) = manifest(run_dir)["checkpoints"]  # step 1 never was; step 2 with rank 1's part
    assert published["step"] == 2 and [p["rank"] for p in published["parts"]] == [1]
    assert not (run_dir / "checkpoints" / "step_000000001.pt").exists()
