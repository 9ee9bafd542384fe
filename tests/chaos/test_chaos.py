"""The chaos tool end to end (a short run hit 6 times, one hit of each of six kinds), and its verifier
shown to fail on broken runs.

One real chaos run (regression preset, 100 steps, no W&B: each hit costs a process start) is shared by
the tests of this file; the verifier's tests break a copy of it and expect the matching verdict to fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import assert_same_training_state, cli, manifest, tree_digest

from trm_cluster.chaos import procs as chaos_procs
from trm_cluster.chaos.driver import printed_progress, step_accounting
from trm_cluster.chaos.verify import differences, final_payload, verify

HITS = 6
SEED = 409
"""Its six hits are six kinds: usr2-twice, term, kill-in-checkpoint-write, kill-tree, kill-in-manifest-write,
usr2-kill (seed 3's 8 hits were five kinds; these six took 27 s against about 42 s)."""


@pytest.fixture(scope="module")
def chaos_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("chaos")
    root = work / "chaos"
    result = cli(
        "chaos", "--hits", str(HITS), "--steps", "100", "--no-wandb", "--seed", str(SEED), "--run-dir", str(root),
        cwd=work, timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (root / "stdout.txt").write_text(result.stdout)
    return root


@pytest.mark.slow
def test_a_run_hit_at_random_moments_ends_as_if_never_hit(chaos_root: Path) -> None:
    summary = (chaos_root / "stdout.txt").read_text().strip().splitlines()[-1]
    assert summary.startswith(f"chaos PASS: {HITS} hits ("), summary
    assert "0 steps lost to USR2/TERM, 0 stranded" in summary
    data = manifest(chaos_root / "run")
    assert data["status"] == "completed" and len(data["segments"]) > HITS // 2
    assert "killed" in {s["end_reason"] for s in data["segments"]}
    # a resume from a checkpoint mid-run happened (where a lost RNG stream or data position would show)
    assert any(0 < s["start_step"] < 100 for s in data["segments"]), [
        s["start_step"] for s in data["segments"]
    ]
    # the same conclusion, reached by the test suite's own comparison rather than the tool's
    assert_same_training_state(chaos_root / "reference", chaos_root / "run")
    recomputed, lost = step_accounting(chaos_root / "run")
    assert lost == 0 and f"{recomputed} steps recomputed after kills" in summary


def _broken_copy(chaos_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(chaos_root / "run", copy)
    return copy


def _verdicts(run_dir: Path, chaos_root: Path) -> dict[str, bool]:
    return {v.name: v.ok for v in verify(run_dir, chaos_root / "reference", [])}


@pytest.mark.slow
def test_the_verifier_fails_a_checkpoint_that_does_not_match_its_digest(
    chaos_root: Path, tmp_path: Path
) -> None:
    run_dir = _broken_copy(chaos_root, tmp_path)
    assert all(_verdicts(run_dir, chaos_root).values())  # the copy itself passes
    oldest = run_dir / manifest(run_dir)["checkpoints"][0]["file"]
    blob = bytearray(oldest.read_bytes())
    blob[len(blob) // 2] ^= 1
    oldest.write_bytes(bytes(blob))
    assert _verdicts(run_dir, chaos_root) == {
        "manifest": True,
        "checkpoints": False,
        "state": True,
        "clean": True,
    }


@pytest.mark.slow
@pytest.mark.parametrize("leftover", [".manifest.json.abc.tmp", "checkpoints/.step_000000100.pt.x.tmp",
                                      "checkpoints/step_000000999.pt"])  # fmt: skip
# (a step past the run's 100: a stop can publish a checkpoint at any step, step 7 included)
def test_the_verifier_fails_a_leftover_file(chaos_root: Path, tmp_path: Path, leftover: str) -> None:
    run_dir = _broken_copy(chaos_root, tmp_path)
    (run_dir / leftover).write_bytes(b"half")
    assert _verdicts(run_dir, chaos_root)["clean"] is False


@pytest.mark.slow
def test_the_verifier_fails_a_process_of_the_run_left_alive(chaos_root: Path, tmp_path: Path) -> None:
    run_dir = _broken_copy(chaos_root, tmp_path)
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    task = subprocess.Popen(sleeper)  # a task the tool saw (by pid and start time)
    named = subprocess.Popen([*sleeper, str(run_dir / "logs")])  # a process naming the run, as submitit's do
    try:
        proc = chaos_procs.identify(task.pid)
        assert proc is not None and chaos_procs.alive(proc)
        named.kill()
        named.wait()
        assert {v.name: v.ok for v in verify(run_dir, chaos_root / "reference", [proc])}["clean"] is False
        task.kill()
        task.wait()
        assert not chaos_procs.alive(proc)
        assert {v.name: v.ok for v in verify(run_dir, chaos_root / "reference", [proc])}["clean"] is True
    finally:
        for child in (task, named):
            child.kill()
            child.wait()


@pytest.mark.slow
def test_a_live_process_naming_the_run_is_a_leftover(chaos_root: Path, tmp_path: Path) -> None:
    run_dir = _broken_copy(chaos_root, tmp_path)
    named = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(run_dir / "logs")])
    try:
        assert _verdicts(run_dir, chaos_root)["clean"] is False
    finally:
        named.kill()
        named.wait()
    assert _verdicts(run_dir, chaos_root)["clean"] is True


@pytest.mark.slow
def test_one_bit_of_one_tensor_is_a_difference(chaos_root: Path) -> None:
    payload = final_payload(chaos_root / "run")
    assert differences(payload, final_payload(chaos_root / "reference"), ("meta.*", "tracking.*")) == []
    name, weights = next(iter(payload["model"].items()))
    flipped = weights.clone()
    flipped.view(torch.uint8).view(-1)[0] ^= 1
    changed = {**payload, "model": {**payload["model"], name: flipped}}
    assert differences(payload, changed, ()) == [f"model.{name}: tensors differ"]
    assert differences({"x": 0.0}, {"x": -0.0}, ()) == ["x: 0.0 vs -0.0"]


def test_progress_is_read_from_the_newest_segment_of_a_job_log(tmp_path: Path) -> None:
    log = tmp_path / "1_0_log.out"
    assert printed_progress(log) is None
    log.write_text("[trm_cluster] segment 0: step 0/100 on vm\n[trm_cluster] step 5/100 loss=1\n")
    assert printed_progress(log) == (0, 5)
    log.write_text(log.read_text() + "[trm_cluster] segment 1: step 50/100 on vm\n")
    assert printed_progress(log) == (1, 50)  # the new task's start, not the old task's last step


def test_an_existing_directory_is_refused_and_left_alone(workdir: Path) -> None:
    root = workdir / "taken"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    before = tree_digest(root)
    result = cli("chaos", "--hits", "1", "--run-dir", str(root), cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"trm-chaos: error: {root} already exists and is not empty; choose another --run-dir"
    ]
    assert tree_digest(root) == before
