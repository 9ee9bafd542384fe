"""The resume doctor's wall time against one uninterrupted run of the same loop and steps.

Per loop, interleaved within each repetition (the order rotated): one uninterrupted run (a fresh
``python``, W&B disabled), the doctor as it starts by default (each run forked from a warm interpreter,
doctor/warm.py) and the doctor with ``--cold`` (a fresh interpreter per process). The ratios are taken
within a repetition. Loops: the example script (``examples/train_script.py``) and the regression and
tiny presets.

Nothing is asserted; read the ratios (the machine is shared). Usage: python benchmarks/bench_doctor.py
[--steps 20] [--repeats 3] [--loops example regression tiny]; benchmarks/run.py folds it in (:func:`measure`).
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import Figure, figure, interleaved, ratios, table

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


def measure(root: Path, loops: list[str], steps: int, repeats: int) -> list[Figure]:
    """Per loop, the three variants interleaved, and the doctor's ratios to one run (benchmarks/run.py)."""
    figures: list[Figure] = []
    for loop in loops:
        work = root / f"doctor-{loop}"
        work.mkdir(parents=True, exist_ok=True)
        variants = {
            "one run": functools.partial(one_run, loop, steps, work),
            "warm": functools.partial(doctor, loop, steps, work, False),
            "--cold": functools.partial(doctor, loop, steps, work, True),
        }
        results = interleaved(variants, repeats)
        note = f"{steps} steps, W&B disabled"
        figures += [figure(f"doctor, {loop}: {name}", values, "s", note) for name, values in results.items()]
        warm, cold = (
            ratios(results["warm"], results["one run"]),
            ratios(results["--cold"], results["one run"]),
        )
        target = {"target": ("<=", 2.0)} if loop == "example" else {}
        figures.append(
            figure(f"doctor, {loop}: warm / one run", warm, "x", "issue 20's target: 2x", **target)
        )
        figures.append(figure(f"doctor, {loop}: --cold / one run", cold, "x"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loops", nargs="+", default=list(LOOPS), choices=list(LOOPS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        print(table(measure(Path(scratch), args.loops, args.steps, args.repeats)))


if __name__ == "__main__":
    main()
