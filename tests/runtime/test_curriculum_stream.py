"""examples/curriculum_stream.py (the peptide-TRM loop's shape: an infinite IterableDataset in 4 loader
workers, a curriculum whose stages make new iterators, its own EMA, a cosine schedule), run as a plain
``python script.py`` stopped by real stops (the doctor's TRM_CLUSTER_STOP_AFTER) and rerun to resume:
two stops in each of two stages, and stops at a stage's first and last step, end with the state of an
uninterrupted run, checkpoint for checkpoint, and the same final EMA file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import REPO, assert_same_training_state, clean_env

SCRIPT = REPO / "examples" / "curriculum_stream.py"
STEPS = 32  # stages begin at 8, 16 and 24
EXIT_STOPPED = 75


def run_script(workdir: Path, run_dir: Path, out: Path, stop_after: int | None = None) -> int:
    env = clean_env(TRM_CLUSTER_RUN_DIR=str(run_dir), WANDB_MODE="disabled")
    if stop_after is not None:
        env["TRM_CLUSTER_STOP_AFTER"] = str(stop_after)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", str(STEPS), "--out", str(out)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode in (0, EXIT_STOPPED), done.stdout + done.stderr
    return done.returncode


@pytest.mark.slow
def test_stops_within_and_across_curriculum_stages_end_exactly_as_an_uninterrupted_run(workdir: Path) -> None:
    reference, out_reference = workdir / "reference", workdir / "reference.pt"
    assert run_script(workdir, reference, out_reference) == 0
    run_dir, out = workdir / "stopped", workdir / "stopped.pt"
    # two stops inside stage 1 (after 10 and 12), a stop at the last step of stage 1 (15), then two in
    # stage 2: at its first step (16) and inside it (19): six processes in all
    for stop in (10, 12, 15, 16, 19):
        assert run_script(workdir, run_dir, out, stop_after=stop) == EXIT_STOPPED
    assert run_script(workdir, run_dir, out) == 0
    # the --out path differs on purpose; NumPy is never seeded nor drawn by the script, so each process
    # starts from its own OS-seeded NumPy state, which nothing reads
    assert_same_training_state(reference, run_dir, ignore=("meta.config.script.args.3", "rng.numpy"))
    expected, actual = torch.load(out_reference), torch.load(out)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
