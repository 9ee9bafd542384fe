"""The submit CLI: dry runs, the debug executor, resumes with overrides, and every refusal."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support import (
    assert_one_continuous_wandb_run,
    assert_same_training_state,
    cli,
    manifest,
    status_json,
    tree_digest,
    wandb_history,
)

from trm_cluster import submit
from trm_cluster.launch.runs import preemption_steps

FAST = ("--preset", "regression", "--wandb-mode", "offline")


def run_debug(workdir: Path, run_dir: Path, *extra: str) -> None:
    result = cli("submit", *FAST, "--executor", "debug", "--run-dir", str(run_dir), *extra, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_prints_the_sbatch_script_and_writes_nothing(workdir: Path) -> None:
    result = cli(
        "submit", *FAST, "--executor", "slurm", "--dry-run", "--partition", "gpu", "--gpus-per-node", "2",
        "--time-min", "90", "--signal-delay-s", "300", "--mem-gb", "32", "--cpus-per-task", "8",
        "--account", "lab", "--qos", "high", "--constraint", "h100", "--sbatch", "exclusive=1",
        "--run-dir", "runs/x", "--steps", "77", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in [
        "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --time=90",
        "#SBATCH --signal=USR2@300", "#SBATCH --mem=32GB", "#SBATCH --cpus-per-task=8",
        "#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --constraint=h100",
        "#SBATCH --exclusive=1", "#SBATCH --open-mode=append", "submitit.core._submit",
    ]:  # fmt: skip
        assert line in out, line
    assert f"{workdir}/runs/x/logs/%j_0_log.out" in out
    (srun,) = [line for line in out.splitlines() if line.startswith("srun ")]
    assert "--kill-on-bad-exit=1" in srun.split()  # two tasks (one per GPU): a failed rank ends the step
    assert '"steps": 77' in out
    assert not (workdir / "runs").exists()


def test_debug_executor_rehearses_preemptions_in_process_bit_exactly(workdir: Path) -> None:
    run_debug(workdir, workdir / "a")
    run_debug(workdir, workdir / "b", "--preemptions", "2")
    assert [s["end_reason"] for s in manifest(workdir / "b")["segments"]] == [
        "preempted",
        "preempted",
        "completed",
    ]
    assert_same_training_state(workdir / "a", workdir / "b")
    assert_one_continuous_wandb_run(workdir / "b", list(range(5, 201, 5)))


def test_rehearsal_delivers_every_preemption_even_when_packed_tight(workdir: Path) -> None:
    """4 preemptions in 9 steps: each signal may land a step late, yet every one must still happen."""
    run_debug(workdir, workdir / "a", "--steps", "9", "--preemptions", "4", "--log-every", "1")
    data = manifest(workdir / "a")
    assert [s["end_reason"] for s in data["segments"]] == ["preempted"] * 4 + ["completed"]
    assert data["requeues"]["preempted"] == 4 and data["segments"][-1]["end_step"] == 9
    assert_one_continuous_wandb_run(workdir / "a", list(range(1, 10)))


def test_preemption_steps_leave_room_for_a_late_signal() -> None:
    for total in range(3, 40):
        for count in range(1, (total - 1) // 2 + 1):
            steps = preemption_steps(count, total, seed=f"{total}-{count}")
            assert len(steps) == count and steps[0] >= 1 and steps[-1] <= total - 2
            assert all(b - a >= 2 for a, b in itertools.pairwise(steps))
    with pytest.raises(ValueError, match="at least 7 steps"):
        preemption_steps(3, 6, seed="x")


def test_status_json_has_the_promised_keys(workdir: Path) -> None:
    run_debug(workdir, workdir / "a", "--steps", "20")
    status = status_json(workdir / "a", workdir)
    assert status["status"] == "completed" and status["step"] == status["total_steps"] == 20
    assert status["run_id"] == manifest(workdir / "a")["wandb"]["run_id"]
    assert [s["end_reason"] for s in status["segments"]] == ["completed"]
    assert status["checkpoints"][-1]["step"] == 20 and len(status["weights_sha256"]) == 64
    human = cli("status", str(workdir / "a"), cwd=workdir).stdout
    assert "status completed  step 20/20" in human


def test_resume_with_explicit_overrides_records_the_change_everywhere(workdir: Path) -> None:
    run_dir = workdir / "a"
    run_debug(workdir, run_dir, "--steps", "100")
    result = cli(
        "submit",
        "--resume",
        str(run_dir),
        "--executor",
        "debug",
        "--steps",
        "150",
        "--lr",
        "0.005",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "config change at step 100: job.lr: 0.01 -> 0.005" in result.stdout
    assert "Resuming W&B run: " + manifest(run_dir)["wandb"]["run_id"] in result.stdout
    data = manifest(run_dir)
    assert data["config"]["job"]["lr"] == 0.005 and data["total_steps"] == 150
    (change,) = data["config_changes"]
    assert change["at_step"] == 100
    assert change["changes"] == {"job.lr": [0.01, 0.005], "run.steps": [100, 150]}
    last = wandb_history(run_dir)[-1]
    assert last.config["lr_modified"] is True and last.config["config_modified"] is True
    assert "job.lr: 0.01 -> 0.005 at step 100" in last.config["lr_change"]
    assert_one_continuous_wandb_run(run_dir, list(range(5, 151, 5)))


def test_no_wandb_writes_no_wandb_files(workdir: Path) -> None:
    run_debug(workdir, workdir / "a", "--steps", "10", "--no-wandb")
    assert not (workdir / "a" / "wandb").exists()
    assert manifest(workdir / "a")["wandb"]["mode"] == "disabled"


def _one_line_error(result, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trm-submit: error:"), result.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--preset", "nope"), "unknown preset 'nope'"),
        (("--preset", "./missing.toml"), "does not exist"),
        (["--time-min", "0"], "--time-min must be positive"),
        (["--steps", "0"], "steps must be positive"),
        (["--signal-delay-s", "3600", "--time-min", "60"], "--signal-delay-s must be in [0, time limit"),
        (["--nodes", "2", "--executor", "local"], "--nodes must be 1 with the local executor"),
        (["--tasks-per-node", "2", "--executor", "debug"], "the debug executor runs one process"),
        (["--tasks-per-node", "3", "--gpus-per-node", "2"], "one task per GPU"),
        (["--preemptions", "500", "--steps", "100"], "--preemptions 500 needs a run of at least 1001 steps"),
        (["--resume", "no/such/dir"], "holds no run"),
        (["--fork", "/etc/hostname"], "Not a directory"),  # a file where a run directory belongs
        (["--resume", "r" * 300], "File name too long"),
    ],
)
def test_bad_new_run_input_is_refused_with_one_line(
    workdir: Path,
    args: tuple[str, ...],
    fragment: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In this process: the refusals are the parser's (a process of its own, with its exit status, is
    the occupied directory's and the resumes' refusals below)."""
    monkeypatch.chdir(workdir)
    code = submit.main([*FAST[2:], "--executor", "debug", *args])
    out, err = capsys.readouterr()
    _one_line_error(subprocess.CompletedProcess(args, code, out, err), fragment)
    assert code == 2 and out == "" and not (workdir / "runs").exists()


@pytest.fixture
def finished_run(workdir: Path) -> Path:
    run_dir = workdir / "done"
    run_debug(workdir, run_dir, "--steps", "20", "--lr", "0.02")
    return run_dir


def _refused_resume(workdir: Path, run_dir: Path, fragment: str, *args: str) -> None:
    before = tree_digest(run_dir)
    result = cli("submit", "--resume", str(run_dir), "--executor", "debug", *args, cwd=workdir)
    _one_line_error(result, fragment)
    assert tree_digest(run_dir) == before


def test_new_run_in_an_occupied_directory_is_refused(workdir: Path, finished_run: Path) -> None:
    before = tree_digest(finished_run)
    result = cli("submit", *FAST, "--executor", "debug", "--run-dir", str(finished_run), cwd=workdir)
    _one_line_error(result, f"use --resume {finished_run}")
    assert tree_digest(finished_run) == before


def test_resume_refusals_leave_the_run_untouched(workdir: Path, finished_run: Path) -> None:
    _refused_resume(workdir, finished_run, "already completed at step 20 of 20", "--steps", "20")
    _refused_resume(workdir, finished_run, "is a preset's run, not a script's", "--script", str(__file__))
    _refused_resume(
        workdir,
        finished_run,
        "differs from the run's config (job.lr, run.steps)",
        "--preset",
        "regression",
        "--steps",
        "20",
    )
    path = finished_run / "manifest.json"
    original = path.read_text()
    path.write_text(json.dumps({**json.loads(original), "schema_version": 2}))
    _refused_resume(workdir, finished_run, "newer than this trm_cluster understands", "--steps", "30")
    path.write_text(original[:-40])
    _refused_resume(workdir, finished_run, "is corrupt", "--steps", "30")
    assert len(list((finished_run / "wandb").glob("offline-run-*"))) == 1  # no second W&B run was started


def test_a_checkpoint_from_another_run_stops_the_job(workdir: Path, finished_run: Path) -> None:
    other = workdir / "other"
    run_debug(workdir, other, "--steps", "20", "--lr", "0.02")
    # someone copies the other run's newest checkpoint (and its manifest record) into this run
    mine, theirs = manifest(finished_run), manifest(other)
    shutil.copy(other / theirs["checkpoints"][-1]["file"], finished_run / mine["checkpoints"][-1]["file"])
    mine["checkpoints"][-1] = theirs["checkpoints"][-1]
    (finished_run / "manifest.json").write_text(json.dumps(mine))
    checkpoints = tree_digest(finished_run / "checkpoints")
    result = cli("submit", "--resume", str(finished_run), "--executor", "debug", "--steps", "30", cwd=workdir)
    assert result.returncode == 1
    assert f"belongs to run '{theirs['run_uid']}'" in result.stderr
    assert tree_digest(finished_run / "checkpoints") == checkpoints
    assert manifest(finished_run)["status"] == "failed"


def test_wandb_group_tags_job_type_and_notes_reach_every_process_of_the_run(workdir: Path) -> None:
    """Flags (or the WANDB_* variables W&B honours, read once at creation) reach wandb.init in every
    segment, read back from the offline .wandb files; a --resume may change them."""
    run_dir = workdir / "run"
    env = {"WANDB_RUN_GROUP": "from-env", "WANDB_NOTES": "notes from the environment"}
    first = cli("submit", *FAST, "--executor", "debug", "--steps", "20", "--run-dir", str(run_dir), "--preemptions",
                "1", "--wandb-tags", "a", "b", "--wandb-job-type", "train", cwd=workdir, **env)  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    resumed = cli("submit", "--resume", str(run_dir), "--steps", "30", "--wandb-group", "ablation",
                  cwd=workdir)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    segments = [s for s in wandb_history(run_dir) if s.run_id]
    assert len(segments) == 3
    for segment in segments[:2]:
        assert (segment.group, segment.job_type, segment.tags) == ("from-env", "train", ("a", "b"))
        assert segment.notes == "notes from the environment"
    assert (segments[2].group, segments[2].tags) == ("ablation", ("a", "b"))  # changed on --resume, rest kept
