"""``status`` on a folder of runs: one line per run, from real runs, and a broken one never hides the rest."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from support import clean_env, cli, manifest, tree_digest

from trm_cluster.launch.runs import preemption_steps
from trm_cluster.ops.goodput import goodput
from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.wandb.writers import wait_for_writers

FAST = ("--preset", "regression", "--wandb-mode", "offline", "--executor", "debug")


def _kill_in_second_segment(runs: Path) -> None:
    """A run preempted once, then SIGKILLed after a checkpoint in its second segment: still 'running'."""
    # the run's name seeds its rehearsal: one preemption early, far from the end
    assert preemption_steps(1, 400, "mid-run") == (22,)
    run_dir = runs / "mid-run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trm_cluster.submit", *FAST, "--run-dir", str(run_dir), "--name", "mid-run",
         "--steps", "400", "--checkpoint-every", "10", "--step-delay-s", "0.01", "--preemptions", "1"],
        cwd=runs, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            data = manifest(run_dir) if (run_dir / "manifest.json").exists() else None
            if data and len(data["segments"]) == 2 and data["checkpoints"][-1]["step"] >= 40:
                break
            time.sleep(0.05)
        else:
            raise TimeoutError("the run never reached a checkpoint in its second segment")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert wait_for_writers([proc.pid]) == []  # its wandb-core flushes and logs a moment longer


def manifest_goodput(run_dir: Path) -> float:
    share = goodput(RunManifest(run_dir).read()).goodput
    assert share is not None
    return share


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    done = cli(
        "submit", *FAST, "--run-dir", str(runs / "done"), "--steps", "20", "--preemptions", "2", cwd=runs
    )
    assert done.returncode == 0, done.stdout + done.stderr
    _kill_in_second_segment(runs)
    (runs / "broken").mkdir()
    (runs / "broken" / "manifest.json").write_text("{")
    (runs / "notes").mkdir()  # not a run: ignored
    return runs


def test_folder_overview_has_one_line_per_run_and_flags_the_broken_one(runs: Path) -> None:
    before = tree_digest(runs)
    result = cli("status", str(runs), cwd=runs)
    assert result.returncode == 1  # a broken run is reported, not hidden
    assert result.stderr.strip() == "trm-status: error: 1 of 3 runs unreadable"
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "RUN", "STATUS", "STEP", "DONE", "SEGS", "TIMEOUT", "PREEMPT", "KILLED", "STEPS/S", "ETA", "GOODPUT",
    ]  # fmt: skip
    table = {line.split()[0]: line.split() for line in lines[1:4]}
    assert table["broken"][1:] == ["unreadable"]
    assert table["done"][1:8] == ["completed", "20/20", "100%", "3", "0", "2", "0"]
    assert table["done"][9] == "-"  # nothing left to train
    done_goodput = manifest_goodput(runs / "done")
    assert table["done"][10] == f"{100 * done_goodput:.0f}%" and 0 < done_goodput < 1
    step = manifest(runs / "mid-run")["checkpoints"][-1]["step"]
    assert table["mid-run"][1:8] == ["running", f"{step}/400", f"{100 * step / 400:.0f}%", "2", "0", "1", "0"]
    assert table["mid-run"][9] != "-"
    assert "broken: " in lines[4] and "corrupt" in lines[4]
    assert tree_digest(runs) == before  # read-only


def test_folder_overview_json_measures_speed_and_time_left(runs: Path) -> None:
    result = cli("status", str(runs), "--json", cwd=runs)
    assert result.returncode == 1
    by_name = {Path(r["run_dir"]).name: r for r in json.loads(result.stdout)}
    assert set(by_name) == {"broken", "done", "mid-run"}
    assert "corrupt" in by_name["broken"]["error"] and "status" not in by_name["broken"]

    mid = by_name["mid-run"]
    data = manifest(runs / "mid-run")
    first = data["segments"][0]
    assert first["end_reason"] == "preempted" and data["segments"][1]["end_reason"] is None
    # the speed: steps trained over seconds trained, the open segment counted up to its newest checkpoint
    # (its process is dead: the wall clock since would understate it); the time left follows from it
    second = data["segments"][1]
    newest = data["checkpoints"][-1]
    seconds = sum(
        (datetime.fromisoformat(end) - datetime.fromisoformat(s["start_time"])).total_seconds()
        for s, end in [(first, first["end_time"]), (second, newest["created_at"])]
    )
    assert mid["steps_per_s"] == pytest.approx(newest["step"] / seconds)
    assert mid["progress"] == round(mid["step"] / 400, 4)
    assert mid["eta_s"] == pytest.approx((400 - mid["step"]) / mid["steps_per_s"])
    assert by_name["done"]["eta_s"] is None and by_name["done"]["preemptions"] == 2


def test_a_folder_without_runs_is_refused_in_one_line(tmp_path: Path) -> None:
    result = cli("status", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == f"trm-status: error: {tmp_path} holds no run (manifest.json not found)"
