"""Sharded saves and loads (state/sharded.py) on 2 gloo ranks on the CPU, an FSDP2 model of a given size
(its AdamW state included: the state is about three times the weights).

Per size, interleaved within each repetition (the order rotated):
- ``sync``: every rank writes its shards through DCP (``save_sharded``) and hashes its files for the
  manifest (``sharded_files``): what a synchronous save costs the loop;
- ``async thread`` / ``async process``: ``dcp.async_save`` with DCP's thread or process: the stall (until
  the loop may go on) and the total (until the files are written and hashed);
- ``gathered torch.save``: the full state gathered to rank 0 (``full_state_dict``, CPU offload) and
  written there with ``torch.save`` + fsync: what a user without DCP would do.
Then the resume: the newest directory loaded into 2 ranks (the same world size) and into 1 (resharded).

Nothing is asserted; read the ratios (the machine is shared). Usage: python benchmarks/bench_sharded.py
[--sizes-mb 100 1000] [--repeats 3] [--no-process]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.filesystem import FileSystemWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType
from torch.distributed.checkpoint.state_dict_saver import async_save as dcp_async_save
from torch.distributed.fsdp import fully_shard
from torch.multiprocessing.spawn import spawn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trm_cluster.state.sharded import ShardedState, save_sharded, sharded_files


def build(state_mb: float, layers: int = 4) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Square layers whose weights are a third of ``state_mb`` (AdamW keeps two moments beside them)."""
    width = max(int((state_mb * 2**20 / 3 / 4 / layers) ** 0.5), 8)
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(width, width, bias=False) for _ in range(layers)))
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, width)).sum().backward()
    optimizer.step()  # the moments exist
    return model, optimizer


def _fsync_write(state: Any, path: Path) -> None:
    with path.open("wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())


def variant(
    name: str, model: nn.Module, optimizer: torch.optim.Optimizer, root: Path, index: int
) -> dict[str, float]:
    rank = dist.get_rank()
    directory = root / f"{name.replace(' ', '_')}-{index}.dcp"
    sharded = ShardedState({"model": model, "optimizer": optimizer})
    dist.barrier()
    began = time.perf_counter()
    if name == "sync":
        save_sharded(sharded.state_dict(), directory)
        sharded_files(directory, rank)
        dist.barrier()
        return {"stall": time.perf_counter() - began}
    if name.startswith("async"):
        kind = AsyncCheckpointerType.PROCESS if name.endswith("process") else AsyncCheckpointerType.THREAD
        writer = FileSystemWriter(directory, sync_files=True)
        future = dcp_async_save(sharded.state_dict(), storage_writer=writer, async_checkpointer_type=kind)
        stall = time.perf_counter() - began
        future.result()  # type: ignore[union-attr]
        sharded_files(directory, rank)
        dist.barrier()
        return {"stall": stall, "total": time.perf_counter() - began}
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = {"model": get_model_state_dict(model, options=full),
             "optimizer": get_optimizer_state_dict(model, optimizer, options=full)}  # fmt: skip
    if rank == 0:
        _fsync_write(state, root / f"gathered-{index}.pt")
    dist.barrier()
    return {"stall": time.perf_counter() - began}


def ranks_main(
    rank: int, world: int, port: int, size: float, repeats: int, names: list[str], out: str
) -> None:
    """One of the two ranks: every variant ``repeats`` times, then the resume; rank 0 writes the figures to
    ``out/ranks.json`` and keeps one directory (``out/keep.dcp``) for the one-rank resume."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    root = Path(out) / "work"
    root.mkdir(exist_ok=True)
    results: dict[str, list[float]] = {}
    model, optimizer = build(size)
    for index in range(repeats):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            for key, value in variant(name, model, optimizer, root, index).items():
                results.setdefault(f"{size:g} MB: {name}: {key}", []).append(value)
        fresh_model, fresh_optimizer = build(size)
        dist.barrier()
        began = time.perf_counter()
        ShardedState({"model": fresh_model, "optimizer": fresh_optimizer}).load(root / f"sync-{index}.dcp")
        dist.barrier()
        results.setdefault(f"{size:g} MB: resume, 2 ranks", []).append(time.perf_counter() - began)
    if rank == 0:
        Path(out, "ranks.json").write_text(json.dumps(results))
        os.replace(root / "sync-0.dcp", Path(out) / "keep.dcp")
    dist.barrier()
    dist.destroy_process_group()


def one_rank_resume(directory: Path, size: float) -> float:
    """The same state loaded into one rank: DCP reshards the two ranks' files."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    model, optimizer = build(size)
    began = time.perf_counter()
    ShardedState({"model": model, "optimizer": optimizer}).load(directory)
    took = time.perf_counter() - began
    dist.destroy_process_group()
    return took


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[100.0, 1000.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-process", action="store_true", help="leave out DCP's process-based async save")
    args = parser.parse_args()
    names = ["sync", "async thread", "gathered torch.save"] + ([] if args.no_process else ["async process"])
    table: dict[str, list[float]] = {}
    for size in args.sizes_mb:
        with tempfile.TemporaryDirectory() as out:
            spawn(ranks_main, args=(2, _free_port(), size, args.repeats, names, out), nprocs=2)
            table.update(json.loads(Path(out, "ranks.json").read_text()))
            table[f"{size:g} MB: resume, 1 rank (resharded)"] = [
                one_rank_resume(Path(out) / "keep.dcp", size)
            ]
    for key, values in table.items():
        print(f"{key:48s} median {statistics.median(values):8.3f} s  [{min(values):.3f}..{max(values):.3f}]")
    for size in args.sizes_mb:
        base = statistics.median(table[f"{size:g} MB: gathered torch.save: stall"])
        for name in ("sync: stall", "async thread: stall", "async process: stall"):
            key = f"{size:g} MB: {name}"
            if key in table:
                print(f"{key} / gathered torch.save + fsync: {statistics.median(table[key]) / base:.3f}")
        sync = statistics.median(table[f"{size:g} MB: sync: stall"])
        for name in ("async thread: stall", "async process: stall"):
            key = f"{size:g} MB: {name}"
            if key in table:
                print(f"{key} / sync save: {statistics.median(table[key]) / sync:.3f}")


if __name__ == "__main__":
    main()
