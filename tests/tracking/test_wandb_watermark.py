"""WandbTracker logs only the steps strictly above the watermark (the highest step already on disk):
read back from the .wandb file a real offline run wrote."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import wandb

from trm_cluster.wandb.files import find_segments, read_segment
from trm_cluster.wandb.tracker import WandbTracker


@pytest.fixture
def offline_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[wandb.Run]:
    for key in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))
    run = wandb.init(
        mode="offline", dir=str(tmp_path), project="watermark", settings=wandb.Settings(console="off")
    )
    yield run
    wandb.teardown()


def test_steps_at_or_below_the_watermark_are_skipped(tmp_path: Path, offline_run: wandb.Run) -> None:
    tracker = WandbTracker(offline_run, watermark=10, run_dir=tmp_path)
    for step in (9, 10, 11, 12):
        tracker.log(step, {"x": float(step)})
    tracker.finish(preempting=False)
    # run.finish() only publishes inform_finish (wandb 0.31): wandb-core closes the .wandb file later.
    # Ending the service waits for that, as the end of a process does.
    wandb.teardown()
    (segment,) = [read_segment(path) for path in find_segments(tmp_path)]
    assert segment.steps == [11, 12] and [row["x"] for row in segment.history] == [11.0, 12.0]
    assert tracker.skipped == 2 and tracker.durable_step == 12
