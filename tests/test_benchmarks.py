"""benchmarks/run.py --smoke, as CI runs it: every figure is measured and written to the results file
with its unit, the machine and the commit, and the counts that must be zero are zero. No timing is
asserted (the figures of a smoke run on a shared machine mean nothing)."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, clean_env

FIGURES = [
    "step, regression: bare loop", "step, regression: through the job", "wrapper overhead, regression: job / bare",
    "wrapper overhead, regression: extra per step",
    "save 1 MB: ours, synchronous", "save 1 MB: ours, background: stall",
    "save 1 MB: ours, background: the copy within the stall",
    "save 1 MB: ours, background: the copy with a thread per core", "save 1 MB: ours, background: total",
    "save 1 MB: plain torch.save", "save 1 MB: torch.save + fsync", "save 1 MB: raw write + fsync",
    "save 1 MB: background stall / synchronous save",
    "save 1 MB: torch.save time / ours synchronous (throughput share)",
    "save 1 MB: torch.save + fsync time / ours synchronous", "save 1 MB: raw write + fsync / ours synchronous",
    "load 1 MB: ours (sha256 verified)", "load 1 MB: plain torch.load", "load 1 MB: ours / torch.load",
    "USR2 to process exit, requeue issued (* MB state)", "USR2 to segment closed (* MB state)",
    "the stop's synchronous save (* MB state)", "USR2 to exit minus (save + 1 s) (* MB state)",
    "steps lost at the preemption (* MB state)",
    "resume: process start to session opened (interpreter, imports)", "resume: manifest read, segment opened, *",
    "resume: checkpoint load (verify + torch.load + restore)", "resume: W&B init (disabled)",
    "resume: process start to the first step", "resume: the rest (the trainer built: *)", "resume: first step minus (imports + load)",
    *(f"manifest {what}, {n} writer(s)" for n in (1, 4, 8) for what in ("updates/s", "lost updates")),
    *(f"doctor, example: {what}" for what in ("one run", "warm", "--cold", "warm / one run", "--cold / one run")),
]  # fmt: skip
MUST_BE_ZERO = ["steps lost at the preemption *", "manifest lost updates, *"]


def test_the_smoke_run_measures_every_figure_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--out", str(out)],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(out.read_text())
    figures = results["figures"]
    for pattern in FIGURES:
        matching = fnmatch.filter(figures, pattern)
        assert len(matching) == 1, f"{pattern!r}: {matching} among {sorted(figures)}"
        assert matching[0] in result.stdout  # in the printed table too
    assert len(figures) == len(FIGURES), sorted(
        set(figures) - {f for p in FIGURES for f in fnmatch.filter(figures, p)}
    )
    for name, entry in figures.items():
        assert entry["unit"] and entry["repeats"] >= 1, name
        assert entry["low"] <= entry["value"] <= entry["high"], name
    for pattern in MUST_BE_ZERO:
        for name in fnmatch.filter(figures, pattern):
            assert figures[name]["high"] == 0, f"{name}: {figures[name]}"
    assert results["machine"]["cpus"] >= 1 and results["machine"]["torch_version"]
    assert results["commit"] and results["commit"] != "unknown"


@pytest.mark.slow
def test_the_gpu_check_runs_its_cpu_smoke_and_finds_the_resumes_exact(tmp_path: Path) -> None:
    """scripts/gpu-check.sh's script on the CPU (--allow-cpu, tiny preset, 12 steps), so it cannot rot
    unseen between GPU loans: every figure present, both resumes exact (CPU kernels are deterministic)."""
    out = tmp_path / "gpu-check.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--allow-cpu", "--preset", "tiny",
         "--steps", "12", "--json", str(out)],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())
    assert figures["gpus"] == 0 and figures["deterministic_exact"] and figures["default_exact"]
    stalls = ("save_s_sync", "save_s_async_host", "save_s_async_device", "save_s_async_total")
    assert all(figures[key] > 0 for key in (*stalls, "save_s_ours", "spectra_per_s_default")), figures
    assert figures["save_s_async_host"] <= figures["save_s_async_device"] <= figures["save_s_async_total"]
