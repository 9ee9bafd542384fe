"""The resume doctor's wall time against one uninterrupted run of the same loop and steps.

Per loop, interleaved within each repetition (the order rotated): one uninterrupted run (a fresh
``python``, W&B disabled), the doctor as it starts by default (each run forked from a warm interpreter,
doctor/warm.py) and the doctor with ``--cold`` (a fresh interpreter per process). The ratios are taken
within a repetition. Loops: the example script (``examples/train_script.py``) and the regression and
tiny presets.

Nothing is asserted; read the ratios (the machine is shared). Usage: python benchmarks/bench_doctor.py
[--steps 20] [--repeats 3] [--loops example regression tiny]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOOPS = {
    "example": ["--script", str(REPO / "examples" / "train_script.py")],
    "regression": ["--preset", "regression"],
    "tiny": ["--preset", "tiny"],
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SUBMITIT_", "SLURM_"))}
    return {**env, "WANDB_MODE": "disabled"}


def one_run(loop: str, steps: int, work: Path) -> float:
    run_dir = work / f"one-{time.monotonic_ns()}"
    if loop == "example":
        command = [sys.executable, LOOPS[loop][1], "--max-steps", str(steps)]
        env = {**_env(), "TRM_CLUSTER_RUN_DIR": str(run_dir)}
    else:
        command = [sys.executable, "-m", "trm_cluster.submit", *LOOPS[loop], "--steps", str(steps),
                   "--executor", "debug", "--wait", "--no-wandb", "--run-dir", str(run_dir)]  # fmt: skip
        env = _env()
    began = time.perf_counter()
    subprocess.run(command, cwd=work, env=env, check=True, capture_output=True)
    return time.perf_counter() - began


def doctor(loop: str, steps: int, work: Path, cold: bool) -> float:
    command = [sys.executable, "-m", "trm_cluster.doctor", *LOOPS[loop], "--steps", str(steps)]
    began = time.perf_counter()
    subprocess.run(
        [*command, *(["--cold"] if cold else [])], cwd=work, env=_env(), check=True, capture_output=True
    )
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loops", nargs="+", default=list(LOOPS), choices=list(LOOPS))
    args = parser.parse_args()
    variants = {
        "one run": lambda loop, work: one_run(loop, args.steps, work),
        "doctor (warm)": lambda loop, work: doctor(loop, args.steps, work, cold=False),
        "doctor (--cold)": lambda loop, work: doctor(loop, args.steps, work, cold=True),
    }
    for loop in args.loops:
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        ratios: dict[str, list[float]] = {"doctor (warm) / one run": [], "doctor (--cold) / one run": []}
        with tempfile.TemporaryDirectory() as scratch:
            for index in range(args.repeats):
                names = list(variants)
                names = names[index % len(names) :] + names[: index % len(names)]
                took = {name: variants[name](loop, Path(scratch)) for name in names}
                for name, value in took.items():
                    seconds[name].append(value)
                for name in ("doctor (warm)", "doctor (--cold)"):
                    ratios[f"{name} / one run"].append(took[name] / took["one run"])
        for name, values in {**seconds, **ratios}.items():
            unit = "s" if name in seconds else "x"
            print(f"{loop} {args.steps} steps, {name:28s} median {statistics.median(values):7.2f} {unit} "
                  f"[{min(values):.2f}..{max(values):.2f}]")  # fmt: skip


if __name__ == "__main__":
    main()
