"""The GPU path, measured in one short run: ``scripts/gpu-check.sh`` (under 5 minutes on one GPU).

The gpu preset for a few hundred steps, uninterrupted and with one preemption, with and without
``--deterministic``: is the resume bit-exact, and within what tolerance without deterministic kernels?
Plus spectra/s, peak GPU memory, the save time of the final state and its stall synchronous vs in the
background (pinned memory, side stream), and NCCL with two ranks when the machine has two GPUs. Prints
one table; ``--json PATH`` (or ``$OUT/gpu-check.json``) keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PRESET = ["gpu"]
COMMON = ("--executor", "local", "--no-wandb", "--checkpoint-every", "100", "--eval-every", "0",
          "--eval-size", "64", "--log-every", "10", "--wait")  # fmt: skip


def run(root: Path, name: str, steps: int, *extra: str) -> tuple[Path, float]:
    run_dir = root / name
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUBMITIT_", "SLURM_"))}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "trm_cluster.submit", "--preset", PRESET[0], *COMMON, "--steps", str(steps),
         "--run-dir", str(run_dir),
         *extra], env=env, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"gpu-check: {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return run_dir, time.perf_counter() - started


def final_payload(run_dir: Path) -> dict[str, Any]:
    record = json.loads((run_dir / "manifest.json").read_text())["checkpoints"][-1]
    return torch.load(run_dir / record["file"], map_location="cpu", weights_only=True)  # type: ignore[no-any-return]


def weight_difference(a: Path, b: Path) -> tuple[bool, float]:
    """(bit-identical, max |a - b|) over the final model weights of two runs."""
    wa, wb = final_payload(a)["model"], final_payload(b)["model"]
    exact = all(torch.equal(wa[k], wb[k]) for k in wa)
    worst = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)
    return exact, worst


def journal_median(run_dir: Path, key: str) -> float | None:
    rows = final_payload(run_dir)["tracking"]["journal"]["rows"]
    values = [r["metrics"][key] for r in rows if key in r["metrics"]]
    return statistics.median(values) if values else None


def save_seconds(run_dir: Path, root: Path) -> tuple[float, float]:
    """Our atomic, hashed, fsynced save of the final state vs a plain torch.save of it."""
    from trm_cluster.rundir.checkpoints import CheckpointStore
    from trm_cluster.rundir.manifest import RunManifest

    payload = final_payload(run_dir)
    store = CheckpointStore(RunManifest(run_dir), keep_last=10)
    started = time.perf_counter()
    store.write(10**8, payload)
    ours = time.perf_counter() - started
    started = time.perf_counter()
    torch.save(payload, root / "plain.pt")
    return ours, time.perf_counter() - started


def _on(device: str, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _on(device, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_on(device, v) for v in value)
    return value


def save_stalls(run_dir: Path, repeats: int = 3) -> dict[str, float]:
    """What a save of the final state, held on the device, costs the training thread: synchronous (to the
    host, hashed, written, fsynced, published) vs in the background (into pinned memory on a side stream,
    then the writer thread), the host's stall and the stall until the device has the copies done too;
    medians over interleaved repetitions, in seconds."""
    from trm_cluster.core.distributed import Ranks
    from trm_cluster.rundir.checkpoints import CheckpointStore
    from trm_cluster.rundir.manifest import RunManifest
    from trm_cluster.state.background_save import BackgroundSaver, snapshot_copy
    from trm_cluster.state.snapshot import StagedStep, stage_step, write_step

    device = "cuda" if torch.cuda.is_available() else "cpu"
    payload = final_payload(run_dir)
    shared = {"model": _on(device, payload["model"]), **_on(device, payload["trainer"])}
    manifest = RunManifest(run_dir)
    data, store, ranks, saver = (
        manifest.read(),
        CheckpointStore(manifest, keep_last=10),
        Ranks(),
        BackgroundSaver(),
    )
    times: dict[str, list[float]] = {"sync": [], "async_host": [], "async_device": [], "async_total": []}

    def sync_device() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for step in range(10**8, 10**8 + 2 * (repeats + 1), 2):
        sync_device()
        began = time.perf_counter()
        write_step(store, ranks, stage_step(ranks, step, dict(shared), {}, {}, data, 10**9))
        times["sync"].append(time.perf_counter() - began)
        sync_device()
        began = time.perf_counter()
        saver.begin()
        staged = stage_step(ranks, step + 1, dict(shared), {}, {}, data, 10**9, on_cpu=False)
        copied = snapshot_copy({"main": staged.main_payload}, saver.buffers)

        def write(copied: Any = copied, at: int = step + 1) -> None:
            write_step(store, ranks, StagedStep(at, None, copied.wait()["main"]))

        saver.start(write, began)
        times["async_host"].append(time.perf_counter() - began)
        sync_device()  # the training stream waits for the copies before its next kernel
        times["async_device"].append(time.perf_counter() - began)
        saver.wait()
        times["async_total"].append(time.perf_counter() - began)
    return {f"save_s_{k}": statistics.median(v[1:]) for k, v in times.items()}  # the first warms up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--allow-cpu", action="store_true", help="run anyway without CUDA (a smoke test)")
    parser.add_argument("--preset", default="gpu", help="the preset to measure (tiny for a CPU smoke test)")
    args = parser.parse_args()
    PRESET[0] = args.preset
    gpus = torch.cuda.device_count()
    if not gpus and not args.allow_cpu:
        print("gpu-check: no CUDA device here; nothing to measure (--allow-cpu for a smoke test)")
        return 2
    device = ("--gpus-per-node", "1") if gpus else ()
    figures: dict[str, Any] = {"gpus": gpus, "device": torch.cuda.get_device_name(0) if gpus else "cpu",
                               "torch": torch.__version__, "steps": args.steps}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        straight, figures["seconds_straight_deterministic"] = run(
            root, "det", args.steps, *device, "--deterministic"
        )
        resumed, _ = run(root, "det-resumed", args.steps, *device, "--deterministic", "--preemptions", "1")
        figures["deterministic_exact"], figures["deterministic_max_diff"] = weight_difference(
            straight, resumed
        )
        fast, figures["seconds_straight_default"] = run(root, "fast", args.steps, *device)
        fast_resumed, _ = run(root, "fast-resumed", args.steps, *device, "--preemptions", "1")
        figures["default_exact"], figures["default_max_diff"] = weight_difference(fast, fast_resumed)
        figures["spectra_per_s_deterministic"] = journal_median(straight, "train/spectra_per_s")
        figures["spectra_per_s_default"] = journal_median(fast, "train/spectra_per_s")
        figures["peak_gpu_memory_gb"] = journal_median(fast, "train/gpu_peak_memory_gb")
        figures["save_s_ours"], figures["save_s_torch_save"] = save_seconds(fast, root)
        figures.update(save_stalls(fast))
        figures["async_stall_share"] = figures["save_s_async_device"] / figures["save_s_sync"]
        if gpus >= 2:
            two, _ = run(root, "nccl2", args.steps, "--gpus-per-node", "2", "--deterministic")
            two_resumed, _ = run(root, "nccl2-resumed", args.steps, "--gpus-per-node", "2", "--deterministic",
                                 "--preemptions", "1")  # fmt: skip
            figures["nccl2_exact"], figures["nccl2_max_diff"] = weight_difference(two, two_resumed)
            figures["spectra_per_s_nccl2"] = journal_median(two, "train/spectra_per_s")
    for key, value in figures.items():
        print(f"{key:<34} {value}")
    out = args.json or (Path(os.environ["OUT"]) / "gpu-check.json" if os.environ.get("OUT") else None)
    if out is not None:
        out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
