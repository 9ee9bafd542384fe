"""Manifest updates per second with 1, 4 and 8 concurrent writer processes, and the updates lost (every
read-modify-write holds the manifest's file lock, so none may be)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from figures import Figure, figure, interleaved

from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.rundir.creation import create_run
from trm_cluster.rundir.manifest import RunManifest


def _writer(run_dir: Path, updates: int, start: multiprocessing.synchronize.Event) -> None:
    manifest = RunManifest(run_dir)
    start.wait()
    for _ in range(updates):
        with manifest.update() as data:
            data.launch["counter"] = int(data.launch.get("counter", 0)) + 1


def _round(root: Path, writers: int, updates: int, lost: list[int], serial: list[int]) -> float:
    run_dir = root / f"manifest-{writers}-{serial[0]}"
    serial[0] += 1
    create_run(run_dir, run_dir.name, "m:W", {"run": {}, "job": {}}, WandbOptions(mode="disabled"), 3, {})
    context = multiprocessing.get_context("fork")
    start = context.Event()
    processes = [context.Process(target=_writer, args=(run_dir, updates, start)) for _ in range(writers)]
    for process in processes:
        process.start()
    began = time.perf_counter()
    start.set()
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - began
    if any(p.exitcode != 0 for p in processes):
        raise RuntimeError(f"a manifest writer failed: exit codes {[p.exitcode for p in processes]}")
    lost.append(writers * updates - int(RunManifest(run_dir).read().launch["counter"]))
    return writers * updates / elapsed


def measure(root: Path, updates: int, repeats: int) -> list[Figure]:
    lost: dict[int, list[int]] = {1: [], 4: [], 8: []}
    serial = [0]
    results = interleaved(
        {str(n): (lambda n=n: _round(root, n, updates, lost[n], serial)) for n in lost},  # type: ignore[misc]
        repeats,
    )
    figures = []
    for n in lost:
        figures.append(
            figure(
                f"manifest updates/s, {n} writer(s)",
                results[str(n)],
                "updates/s",
                f"{updates} locked read-modify-writes each",
            )
        )
        figures.append(
            figure(
                f"manifest lost updates, {n} writer(s)",
                [float(x) for x in lost[n]],
                "updates",
                target=("<=", 0),
            )
        )
    return figures
