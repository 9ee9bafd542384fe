"""``submit --fork RUN_DIR[@STEP]``: a new run from another run's checkpoint, through the real CLI.

The parent is a real regression run (debug executor, milliseconds per step); the forks run as real jobs.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from support import (
    assert_same_training_state,
    cli,
    final_checkpoint_payload,
    manifest,
    small_script,
    tree_digest,
    wandb_history,
)

from trm_cluster import submit
from trm_cluster.launch.fork import ForkPoint
from trm_cluster.rundir.manifest import RunManifest

FAST = ("--preset", "regression", "--executor", "debug")


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed 40-step run with checkpoints at 10, 20, 30 and 40, W&B disabled."""
    runs = tmp_path_factory.mktemp("runs")
    done = cli(
        "submit", *FAST, "--no-wandb", "--run-dir", str(runs / "parent"), "--name", "parent",
        "--steps", "40", "--checkpoint-every", "10", "--keep-checkpoints", "4", cwd=runs,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert [c["step"] for c in manifest(runs / "parent")["checkpoints"]] == [10, 20, 30, 40]
    return runs / "parent"


def test_a_fork_without_overrides_is_a_new_run_that_ends_as_its_parent_did(parent: Path) -> None:
    before = tree_digest(parent)
    child = parent.parent / "same"
    result = cli(
        "submit",
        "--fork",
        f"{parent}@20",
        "--run-dir",
        str(child),
        "--wandb-mode",
        "offline",
        cwd=parent.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert tree_digest(parent) == before  # the parent is only read

    mom, data = manifest(parent), manifest(child)
    assert data["run_uid"] != mom["run_uid"] and data["wandb"]["run_id"] != mom["wandb"]["run_id"]
    assert data["forked_from"] == {
        "run_dir": str(parent.resolve()), "name": "parent", "run_uid": mom["run_uid"],
        "wandb_run_id": mom["wandb"]["run_id"], "step": 20, "changes": {},
    }  # fmt: skip
    assert data["config"] == mom["config"] and data["config_changes"] == []
    assert [(s["start_step"], s["end_reason"]) for s in data["segments"]] == [(20, "completed")]
    # the child resumed the parent's state at 20 (weights, optimizer, data position, RNG): it ends as the
    # parent ended, bit for bit; only who and when differ
    assert_same_training_state(parent, child)
    assert final_checkpoint_payload(child)["meta"]["run_uid"] == data["run_uid"]

    # one new W&B run, grouped under the parent's name, that names its origin and begins after step 20
    (segment,) = wandb_history(child)
    assert segment.run_id == data["wandb"]["run_id"] and segment.group == "parent"
    origin = segment.config["forked_from"]
    assert (origin["run"], origin["run_id"], origin["step"]) == ("parent", mom["wandb"]["run_id"], 20)
    assert segment.steps and min(segment.steps) > 20 and max(segment.steps) == 40


def test_a_fork_with_overrides_records_what_changed_and_trains_under_it(parent: Path) -> None:
    before = tree_digest(parent)
    child = parent.parent / "faster"
    result = cli(
        "submit", "--fork", str(parent), "--run-dir", str(child), "--lr", "0.05", "--steps", "50",
        "--no-wandb", cwd=parent.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "forked from parent" in result.stdout and "at step 40" in result.stdout
    assert tree_digest(parent) == before

    data = manifest(child)
    expected = {"job.lr": [0.01, 0.05], "run.steps": [40, 50]}
    assert data["forked_from"]["step"] == 40 and data["forked_from"]["changes"] == expected  # default: newest
    assert [(c["at_step"], c["changes"]) for c in data["config_changes"]] == [(40, expected)]
    assert data["config"]["job"]["lr"] == 0.05 and data["wandb"]["group"] == "parent"
    assert data["status"] == "completed" and data["segments"][0]["start_step"] == 40
    assert final_checkpoint_payload(child)["meta"]["step"] == 50


@pytest.mark.parametrize(
    ("fork", "message"),
    [
        ("@7", "has no checkpoint at step 7; steps with one: 10, 20, 30, 40"),
        ("@40", "the fork starts at step 40; pass --steps N with N > 40"),
        ("/nowhere@10", "holds no run"),
        ("&resume", "pass only one of them"),
    ],
)
def test_a_fork_that_cannot_start_is_refused_in_one_line_and_writes_nothing(
    parent: Path, fork: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's own main, in this process (refused before any job exists: no import cost per case)."""
    args = ["--fork", str(parent) + fork if fork.startswith("@") else fork]
    if fork == "&resume":
        args = ["--fork", str(parent), "--resume", str(parent)]
    before = tree_digest(parent.parent)
    assert submit.main([*args, "--run-dir", str(parent.parent / "refused")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("trm-submit: error: ") and message in line, err
    assert tree_digest(parent.parent) == before and not (parent.parent / "refused").exists()


def test_fork_points_parse_a_step_after_the_last_at_sign() -> None:
    assert ForkPoint.parse("runs/a@1500") == ForkPoint(Path("runs/a"), 1500)
    assert ForkPoint.parse("runs/a") == ForkPoint(Path("runs/a"), None)
    assert ForkPoint.parse("runs/x@y@20") == ForkPoint(Path("runs/x@y"), 20)
    with pytest.raises(ValueError, match="non-negative integer"):
        ForkPoint.parse("runs/a@latest")


def test_a_fork_prints_the_grace_window_advice_from_its_parents_history(
    parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As ``--resume`` does from the run's own: a parent whose stop needed 2 x (4 s + 5.5 s + its finish) warns a fork
    submitted with 5 s (local executor: the advice is for jobs that get a signal delay)."""
    slow = tmp_path / "slow"
    shutil.copytree(parent, slow)
    with RunManifest(slow).update() as data:
        data.segments[0].timings.step_s, data.segments[0].timings.sync_save_s = 4.0, 5.5
    child = tmp_path / "child"
    argv = ["--fork", str(slow), "--run-dir", str(child), "--executor", "local", "--steps", "41"]
    assert submit.main([*argv, "--signal-delay-s", "5"]) == 0
    out = capsys.readouterr().out
    assert "warning: from the parent run's measured history: --signal-delay-s 5 is too short" in out, out
    assert "use --signal-delay-s 20" in out
    deadline = time.monotonic() + 300  # the fork's one step, so that no job outlives the test
    while manifest(child)["status"] not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert manifest(child)["status"] == "completed"


OWN_SCRIPT = small_script("steps=10, checkpoint_every=5")


def test_a_script_run_forks_with_its_script_and_new_script_arguments(tmp_path: Path) -> None:
    """``--fork`` of a ``--script`` run: the child runs the parent's script from the parent's checkpoint;
    without changes it ends as the parent did, bit for bit; ``--script-args`` replace the script's own."""
    (tmp_path / "train.py").write_text(OWN_SCRIPT)
    parent = tmp_path / "parent"
    debug = ("--executor", "debug", "--no-wandb")
    done = cli("submit", "--script", "train.py", *debug, "--run-dir", str(parent), "--script-args", "--lr", "0.05",
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    before = tree_digest(parent)
    same = cli("submit", "--fork", f"{parent}@5", *debug, "--run-dir", str(tmp_path / "same"), cwd=tmp_path)
    assert same.returncode == 0 and "after the loop at step 10 lr 0.05" in same.stdout, (
        same.stdout + same.stderr
    )
    assert_same_training_state(parent, tmp_path / "same")
    changed = cli("submit", "--fork", f"{parent}@5", *debug, "--run-dir", str(tmp_path / "lr02"),
                  "--script-args", "--lr", "0.2", cwd=tmp_path)  # fmt: skip
    assert changed.returncode == 0 and "lr 0.2" in changed.stdout, changed.stdout + changed.stderr
    data = manifest(tmp_path / "lr02")
    assert data["forked_from"]["step"] == 5 and data["forked_from"]["changes"] == {
        "script.args": [["--lr", "0.05"], ["--lr", "0.2"]]
    }
    assert data["config"]["script"]["path"] == manifest(parent)["config"]["script"]["path"]
    assert [(s["start_step"], s["end_reason"]) for s in data["segments"]] == [(5, "completed")]
    assert tree_digest(parent) == before
