"""Goodput: where a run's wall-clock went, from real manifests (a known timeline, an old manifest, and a
real process SIGKILLed mid-run whose heartbeat tells the next process what it must recompute)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import clean_env, manifest, new_run, this_process

from trm_cluster.ops import plot
from trm_cluster.ops.goodput import goodput
from trm_cluster.rundir.heartbeat import HEARTBEAT_NAME
from trm_cluster.rundir.manifest import CheckpointRecord, ManifestData, RunManifest, Segment
from trm_cluster.rundir.segment_timings import SegmentTimings
from trm_cluster.rundir.segments import open_segment

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def segment(index: int, **fields: object) -> Segment:
    base = dict(
        index=index, job_id="7", array_index=None, restart_count=index, host="h", pid=1, executor="slurm"
    )
    measured = {
        key: fields.pop(key) for key in ("process_start_time", "first_step_time", "save_s") if key in fields
    }
    return Segment(**{**base, **fields}, timings=SegmentTimings(**measured))  # type: ignore[arg-type]


def timeline(tmp_path: Path) -> ManifestData:
    """Created at 0; queued 60 s; segment 0 starts up 15 s, trains, saves 5 s, is preempted at 175;
    queued until 300; segment 1 is killed: durable at 400, last heartbeat at 430 (30 steps past it);
    queued until 500; segment 2 starts up 10 s and completes at 600, 2 s of it saving."""
    data = new_run(tmp_path / "run").read()
    data.created_at = at(0)
    data.status = "completed"
    data.segments = [
        segment(0, process_start_time=at(60), start_time=at(65), first_step_time=at(75), save_s=5.0,
                start_step=0, end_time=at(175), end_step=100, end_reason="preempted"),
        segment(1, process_start_time=at(300), start_time=at(302), first_step_time=at(310), save_s=1.0,
                start_step=100, end_time=at(400), end_step=200, end_reason="killed",
                last_seen_step=230, last_seen_time=at(430), recomputed_steps=30),
        segment(2, process_start_time=at(500), start_time=at(501), first_step_time=at(510), save_s=2.0,
                start_step=200, end_time=at(600), end_step=300, end_reason="completed"),
    ]  # fmt: skip
    return data


def test_a_known_timeline_splits_into_queue_startup_training_saving_and_lost_work(tmp_path: Path) -> None:
    g = goodput(timeline(tmp_path))
    assert g.wall_s == pytest.approx(600)
    assert g.queue_s == pytest.approx(60 + (300 - 175) + (500 - 430))
    assert g.startup_s == pytest.approx(15 + 10 + 10)
    assert g.saving_s == pytest.approx(5 + 1 + 2)
    assert g.lost_s == pytest.approx(30)
    assert g.training_s == pytest.approx((175 - 75 - 5) + (400 - 310 - 1) + (600 - 510 - 2))
    assert g.steps_recomputed == 30 and g.unaccounted_s == pytest.approx(0)
    assert g.wall_s == pytest.approx(g.queue_s + g.startup_s + g.saving_s + g.lost_s + g.training_s)
    assert g.goodput == pytest.approx(g.training_s / 600)


def test_a_manifest_written_before_goodput_existed_still_reads_and_counts(tmp_path: Path) -> None:
    data = timeline(tmp_path)
    raw = data.to_dict()
    new_fields = ("timings", "last_seen_step", "last_seen_time", "recomputed_steps")
    for s in raw["segments"]:
        for name in new_fields:
            del s[name]
    del raw["forked_from"]
    old = ManifestData.from_dict(json.loads(json.dumps(raw)))
    g = goodput(old)
    assert g.startup_s == 0 and g.saving_s == 0 and g.steps_recomputed == 0  # unknown: counted as training
    assert g.training_s == pytest.approx((175 - 65) + (400 - 302) + (600 - 501))
    assert g.wall_s == pytest.approx(600)


def test_a_manifest_with_the_old_timing_fields_reads_into_the_one_record(tmp_path: Path) -> None:
    """Before one record, goodput's four fields sat on the segment and the grace check's in a dict."""
    data = timeline(tmp_path)
    raw = data.to_dict()
    for s in raw["segments"]:
        s.update({key: s["timings"].pop(key) for key in ("process_start_time", "first_step_time", "save_s")})
        s["stop_save_s"] = 0.25
        s["timings"] = {"step_s": 0.5, "sync_save_s": 0.75, "finish_s": 1.0}
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(raw))
    old = RunManifest(tmp_path / "run").read()
    assert old.segments[1].timings == SegmentTimings(
        process_start_time=at(300), first_step_time=at(310), save_s=1.0, stop_save_s=0.25,
        step_s=0.5, sync_save_s=0.75, finish_s=1.0,
    )  # fmt: skip
    raw["config_hash"] = data.config_hash
    assert goodput(old) == goodput(data)


def test_a_sigkilled_process_leaves_a_heartbeat_that_tells_the_next_one_what_it_recomputes(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trm_cluster.submit", "--preset", "regression", "--executor", "debug",
         "--no-wandb", "--run-dir", str(run_dir), "--steps", "100000", "--checkpoint-every", "0",
         "--step-delay-s", "0.01"],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    beat_path = run_dir / HEARTBEAT_NAME
    try:
        deadline = time.monotonic() + 120
        while not (beat_path.exists() and json.loads(beat_path.read_text() or "{}").get("step", 0) >= 5):
            assert proc.poll() is None and time.monotonic() < deadline, "no heartbeat past step 5"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    beat = json.loads(beat_path.read_text())
    data = manifest(run_dir)
    assert data["checkpoints"] == [] and data["segments"][0]["end_reason"] is None
    assert (
        data["segments"][0]["timings"]["first_step_time"] is not None
    )  # recorded by the dead process itself

    open_segment(RunManifest(run_dir), this_process())  # what the next process does first
    killed = RunManifest(run_dir).read().segments[0]
    assert killed.end_reason == "killed" and killed.end_step == 0
    assert killed.last_seen_step == beat["step"] and killed.recomputed_steps == beat["step"] >= 5
    g = goodput(RunManifest(run_dir).read())
    assert g.steps_recomputed == beat["step"] and g.lost_s > 0
    (mark,) = [line for line in plot.run_figure(run_dir).axes[0].get_lines() if line.get_label() == "killed"]
    assert mark.get_marker() == "X" and mark.get_ydata()[0] == 0  # at its durable step
    # nothing durable was trained: its training time is not useful time, it is lost
    assert g.segments[0].training_s == 0 and g.segments[0].lost_s == pytest.approx(
        beat["time"] - datetime.fromisoformat(killed.end_time or "").timestamp(), abs=0.01
    )


def test_a_checkpoint_newer_than_the_heartbeat_means_nothing_is_recomputed(tmp_path: Path) -> None:
    manifest_ = new_run(tmp_path / "run")
    open_segment(manifest_, this_process())
    (tmp_path / "run" / HEARTBEAT_NAME).write_text(
        json.dumps({"segment": 0, "step": 8, "time": time.time(), "save_s": 0.5})
    )
    with manifest_.update() as data:
        data.checkpoints.append(CheckpointRecord(step=10, file="c.pt", bytes=1, sha256="0", created_at=at(0)))
        data.segments[0].pid = 2**22 + 1  # a pid that no process has: the segment's process is gone
    context = this_process()
    open_segment(manifest_, context)
    killed = manifest_.read().segments[0]
    assert killed.recomputed_steps == 0 and killed.last_seen_step == 8 and killed.timings.save_s == 0.5
