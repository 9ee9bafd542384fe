"""SIGKILL inside a durable write (the atomic-write test seam holds the temp file open), then resume.

Whatever is half-written must never be trusted or left to pile up: the manifest keeps its previous
version, an unpublished checkpoint is deleted, and the resumed run ends bit-identical to one never killed.
Periodic checkpoints are written in the background (async_save.py) and the reference run writes every one
on the training thread (--sync-checkpoints): the resumed runs also show that both write the same state.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import assert_one_continuous_wandb_run, assert_same_training_state, clean_env, cli, manifest

from trm_cluster.rundir.atomic import PAUSE_ENV
from trm_cluster.wandb.writers import wait_for_writers

FAST = ("--preset", "regression", "--wandb-mode", "offline", "--executor", "debug")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run, never killed, with synchronous saves."""
    work = tmp_path_factory.mktemp("reference")
    result = cli("submit", *FAST, "--sync-checkpoints", "--run-dir", str(work / "run"), cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    return work / "run"


def _temps(directory: Path, name: str) -> list[Path]:
    return list(directory.glob(f".{name}.*.tmp"))


def _kill_inside(run_dir: Path, pause: str, inside: Callable[[], bool], cwd: Path) -> None:
    """Train with ``pause`` (``name:seconds``) in force; SIGKILL the process (debug executor: the trainer)
    once frozen (SIGSTOP) with inside() true. The pause is a window: one missed (a starved poller) is
    tried again in a new run with a 4x longer one, so a slow machine makes this slower, never red."""
    name, seconds = pause.rsplit(":", 1)
    for attempt in range(3):
        shutil.rmtree(run_dir, ignore_errors=True)
        with (cwd / "stdout.txt").open("w") as stdout:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "trm_cluster.submit", *FAST, "--run-dir", str(run_dir)], cwd=cwd,
                env=clean_env(**{PAUSE_ENV: f"{name}:{float(seconds) * 4**attempt}"}), stdout=stdout,
            )  # fmt: skip
        try:
            while not inside() and proc.poll() is None:
                time.sleep(0.02)
            proc.send_signal(signal.SIGSTOP)  # frozen: what inside() sees now is what the kill leaves
            caught, ended = inside(), proc.poll()
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert wait_for_writers([proc.pid]) == []
        assert ended in (None, 0), f"the run failed (exit code {ended}) before the write to kill"
        if caught:
            return
    pytest.fail(f"never caught the process inside the paused write ({pause}, 3 runs)")


def _stdout(cwd: Path) -> str:
    path = cwd / "stdout.txt"
    return path.read_text() if path.exists() else ""


def _resume_and_check(run_dir: Path, cwd: Path, reference: Path) -> None:
    resumed = cli("submit", "--resume", str(run_dir), "--executor", "debug", cwd=cwd)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    data = manifest(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["killed", "completed"]
    assert data["segments"][1]["start_step"] == 100
    assert_same_training_state(reference, run_dir, ignore=("meta.config.run.sync_checkpoints",))
    assert not _temps(run_dir, "manifest.json") and not list((run_dir / "checkpoints").glob(".*.tmp"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        ".spare-rank0", "step_000000100.pt", "step_000000150.pt", "step_000000200.pt",
    ]  # fmt: skip  # the spare: step 50's file, dropped by retention, for the next save to write over
    assert_one_continuous_wandb_run(run_dir, list(range(5, 201, 5)))


def test_killed_while_writing_a_checkpoint(workdir: Path, reference: Path) -> None:
    """Checkpoint 150 is written in the background: the process trains on to step 200 (where the next
    save waits for it) while 150's write is paused, and is killed there."""
    run_dir = workdir / "run"
    checkpoints = run_dir / "checkpoints"

    def writing_150_at_step_200() -> bool:
        return bool(_temps(checkpoints, "step_000000150.pt")) and "step 200/200" in _stdout(workdir)

    _kill_inside(run_dir, "step_000000150:600", writing_150_at_step_200, workdir)
    assert [c["step"] for c in manifest(run_dir)["checkpoints"]] == [50, 100]  # 150 never published
    assert not (checkpoints / "step_000000150.pt").exists()
    _resume_and_check(run_dir, workdir, reference)


def test_killed_while_writing_the_manifest(workdir: Path, reference: Path) -> None:
    """Killed while publishing checkpoint 150: the file is whole on disk, but the manifest never named it."""
    run_dir = workdir / "run"
    written = run_dir / "checkpoints" / "step_000000150.pt"

    def publishing_150() -> bool:  # the manifest write after checkpoint 150's file is its publication
        if not (written.exists() and _temps(run_dir, "manifest.json")):
            return False
        return 150 not in [c["step"] for c in manifest(run_dir)["checkpoints"]]

    _kill_inside(run_dir, "manifest.json:1.5", publishing_150, workdir)
    assert [c["step"] for c in manifest(run_dir)["checkpoints"]] == [50, 100]  # the old manifest, intact
    assert written.exists() and _temps(run_dir, "manifest.json")
    _resume_and_check(run_dir, workdir, reference)
