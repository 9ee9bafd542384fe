"""Checkpoint save and load at a given size: the job's own save path, synchronous and in the background,
next to plain torch.save / torch.load and the disk's raw sequential write + fsync of the same bytes."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import torch
from figures import Figure, figure, interleaved, ratios

from trm_cluster.core.distributed import Ranks
from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.rundir.checkpoints import CheckpointStore
from trm_cluster.rundir.creation import create_run
from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.state.background_save import BackgroundSaver, snapshot_copy
from trm_cluster.state.snapshot import StagedStep, stage_step, write_step


def _state(megabytes: float) -> dict[str, object]:
    """A model and an optimizer state of about ``megabytes`` in all (float32), in a few tensors."""
    per_tensor = max(int(megabytes * 2**20 / 4 / 8), 1)
    generator = torch.Generator().manual_seed(0)
    model = {f"layer{i}.weight": torch.randn(per_tensor, generator=generator) for i in range(4)}
    optimizer = {"state": {i: {"exp_avg": torch.randn(per_tensor, generator=generator)} for i in range(4)}}
    return {"model": model, "optimizer": optimizer}


def measure(root: Path, megabytes: float, repeats: int) -> list[Figure]:
    run_dir = root / f"checkpoint-{megabytes:g}mb"
    config = {"run": {"steps": 10**9}, "job": {}}
    data = create_run(run_dir, run_dir.name, "m:W", config, WandbOptions(mode="disabled"), 3, {})
    store = CheckpointStore(RunManifest(run_dir), keep_last=2)
    ranks, state, steps = Ranks(), _state(megabytes), itertools.count(1)
    saver, plain, raw = BackgroundSaver(), root / "plain.pt", root / "raw.bin"
    stall: list[float] = []
    copying: list[float] = []

    def timed(action: object) -> float:
        began = time.perf_counter()
        action()  # type: ignore[operator]
        return time.perf_counter() - began

    def ours_sync() -> None:
        """The session's synchronous save: staged (captured to CPU) and written on this thread."""
        write_step(store, ranks, stage_step(ranks, next(steps), dict(state), {}, {}, data, 10**9))

    def ours_async() -> None:
        """The session's background save: staged, copied off, handed to the writer; joined = durable."""
        began = time.perf_counter()
        saver.begin()
        staged = stage_step(ranks, next(steps), dict(state), {}, {}, data, 10**9, on_cpu=False)
        copy_began = time.perf_counter()
        copied = snapshot_copy({"main": staged.main_payload}, saver.buffers)
        copying.append(time.perf_counter() - copy_began)
        saver.start(
            lambda: write_step(store, ranks, StagedStep(staged.step, None, copied.wait()["main"])), began
        )
        stall.append(time.perf_counter() - began)
        saver.wait()

    def copy_all_threads() -> float:
        """The stall's copy with one intra-op thread per core, as a training process has by default (the
        suite pins one thread, run.py): the copy is memory-bound, so this is the floor on this machine."""
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)
        try:
            return timed(lambda: snapshot_copy({"main": state}, saver.buffers).wait())
        finally:
            torch.set_num_threads(threads)

    def torch_save() -> None:
        torch.save(state, plain)

    def torch_save_fsync() -> None:
        with (root / "plain-fsync.pt").open("wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())

    def raw_write() -> None:
        payload = plain.read_bytes() if plain.exists() else bytes(int(megabytes * 2**20))
        began = time.perf_counter()
        with raw.open("wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        raw_times.append(time.perf_counter() - began)

    raw_times: list[float] = []
    results = interleaved(
        {
            "sync": lambda: timed(ours_sync),
            "async_total": lambda: timed(ours_async),
            "copy_all_threads": copy_all_threads,
            "torch_save": lambda: timed(torch_save),
            "torch_save_fsync": lambda: timed(torch_save_fsync),
            "raw": lambda: timed(raw_write),
            "load_ours": lambda: timed(lambda: store.load_latest(data.run_uid)),
            "torch_load": lambda: timed(lambda: torch.load(plain, map_location="cpu", weights_only=True)),
        },
        repeats,
    )
    size = f"{megabytes:g} MB"
    ms = [1e3 * t for t in results["sync"]]
    return [
        figure(f"save {size}: ours, synchronous", ms, "ms", "atomic write + sha256 + fsync + manifest"),
        figure(
            f"save {size}: ours, background: stall", [1e3 * t for t in stall], "ms", "copy off + hand-off"
        ),
        figure(
            f"save {size}: ours, background: the copy within the stall",
            [1e3 * t for t in copying],
            "ms",
            "snapshot_copy alone; the rest is staging and the hand-off to the writer thread",
        ),
        figure(
            f"save {size}: ours, background: the copy with a thread per core",
            [1e3 * t for t in results["copy_all_threads"]],
            "ms",
            "snapshot_copy with torch's default threads (a training process's); the other figures use one",
        ),
        figure(
            f"save {size}: ours, background: total",
            [1e3 * t for t in results["async_total"]],
            "ms",
            "until durable and published",
        ),
        figure(f"save {size}: plain torch.save", [1e3 * t for t in results["torch_save"]], "ms", "no fsync"),
        figure(
            f"save {size}: torch.save + fsync",
            [1e3 * t for t in results["torch_save_fsync"]],
            "ms",
            "as durable as ours, without the digest and the manifest",
        ),
        figure(f"save {size}: raw write + fsync", [1e3 * t for t in raw_times], "ms", "the disk's limit"),
        figure(
            f"save {size}: background stall / synchronous save",
            ratios(stall, results["sync"]),
            "x",
            target=("<=", 0.05),
        ),
        figure(
            f"save {size}: torch.save time / ours synchronous (throughput share)",
            ratios(results["torch_save"], results["sync"]),
            "x",
            target=(">=", 0.9),
        ),
        figure(
            f"save {size}: torch.save + fsync time / ours synchronous",
            ratios(results["torch_save_fsync"], results["sync"]),
            "x",
        ),
        figure(f"save {size}: raw write + fsync / ours synchronous", ratios(raw_times, results["sync"]), "x"),
        figure(f"load {size}: ours (sha256 verified)", [1e3 * t for t in results["load_ours"]], "ms"),
        figure(f"load {size}: plain torch.load", [1e3 * t for t in results["torch_load"]], "ms"),
        figure(f"load {size}: ours / torch.load", ratios(results["load_ours"], results["torch_load"]), "x"),
    ]
