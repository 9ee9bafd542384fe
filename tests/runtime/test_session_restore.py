"""A session's restore, in this process: a fallback past a corrupt newest checkpoint is what the
segment records as its start, and the training goes on from the older one."""

from __future__ import annotations

from pathlib import Path

import torch
from support import manifest

from trm_cluster.core.job_context import JobContext
from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.rundir.creation import create_script_run
from trm_cluster.runtime.plan import SessionPlan
from trm_cluster.runtime.session import Session


def _train(run_dir: Path, steps: int) -> int:
    weight = torch.zeros(1)
    plan = SessionPlan(run_dir, JobContext.detect(), quiet=True)
    with Session(plan, {"steps": steps, "checkpoint_every": 2, "keep_checkpoints": 5}) as run:
        start = run.restore(weight=weight)
        for _ in run.steps():
            weight += 1
    assert float(weight) == steps  # restored, then trained to the end
    return start


def test_a_fallback_past_a_corrupt_checkpoint_is_the_segments_start(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    create_script_run(run_dir, Path(__file__), [], {}, wandb=WandbOptions(mode="disabled"))
    assert _train(run_dir, 4) == 0
    newest = run_dir / manifest(run_dir)["checkpoints"][-1]["file"]
    newest.write_bytes(newest.read_bytes()[:-10])  # torn: fails its digest
    assert _train(run_dir, 6) == 2  # fell back to step 2
    first, second = manifest(run_dir)["segments"]
    assert first["end_step"] == 4 and second["start_step"] == 2  # not 4, the manifest's newest at the open
