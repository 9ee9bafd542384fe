"""The peptide-trm job through the real CLI: exact resume across real signals, and a curriculum change.

The tiny preset, shortened (fewer steps, a shorter curriculum horizon so the run crosses stage
boundaries and switches the spectrum loss on, a smaller evaluation set) to keep CI fast.
"""

from __future__ import annotations

from pathlib import Path

from support import (
    assert_one_continuous_wandb_run,
    assert_same_training_state,
    cli,
    final_checkpoint_payload,
    manifest,
    wandb_history,
)

SHORT_TINY = (
    "--preset", "tiny", "--wandb-mode", "offline", "--steps", "120", "--checkpoint-every", "40",
    "--log-every", "10", "--eval-every", "0", "--eval-size", "64", "--curriculum.horizon", "120",
)  # fmt: skip


def test_tiny_interrupted_twice_ends_bit_identical_carry_and_ema_included(workdir: Path) -> None:
    straight, interrupted = workdir / "straight", workdir / "interrupted"
    # a quarter of the run, in the same proportions (the curriculum's stages, three checkpoints)
    local = (
        "--executor",
        "local",
        "--wait",
        "--steps",
        "30",
        "--checkpoint-every",
        "10",
        "--curriculum.horizon",
        "30",
    )
    first = cli("submit", *SHORT_TINY, *local, "--run-dir", str(straight), cwd=workdir)
    assert first.returncode == 0, first.stdout + first.stderr
    second = cli(
        "submit", *SHORT_TINY, *local, "--run-dir", str(interrupted), "--preemptions", "2", cwd=workdir
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert [s["end_reason"] for s in manifest(interrupted)["segments"]] == [
        "preempted",
        "preempted",
        "completed",
    ]

    assert {"carry", "ema", "curriculum"} <= final_checkpoint_payload(straight)["trainer"].keys()
    assert_same_training_state(straight, interrupted)
    assert_one_continuous_wandb_run(interrupted, list(range(10, 31, 10)))
    final_eval = [row for s in wandb_history(interrupted) for row in s.history if "eval/aa_recall" in row]
    assert len(final_eval) == 1 and final_eval[0]["_step"] == 30


def test_resume_with_delayed_spectrum_applies_the_new_stage_at_once(workdir: Path) -> None:
    run_dir = workdir / "run"
    # horizon 200: the default curriculum switches the spectrum loss on at step 50, delayed-spectrum at 100
    common = ("--curriculum.horizon", "200", "--executor", "debug")
    first = cli("submit", *SHORT_TINY, *common, "--steps", "70", "--run-dir", str(run_dir), cwd=workdir)
    assert first.returncode == 0, first.stdout + first.stderr
    resumed = cli("submit", "--resume", str(run_dir), "--curriculum", "delayed-spectrum", "--steps", "90",
                  "--executor", "debug", cwd=workdir)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "config change at step 70: job.curriculum.name: 'default' -> 'delayed-spectrum'" in resumed.stdout

    (change,) = manifest(run_dir)["config_changes"]
    assert change["at_step"] == 70 and change["changes"]["job.curriculum.name"] == [
        "default",
        "delayed-spectrum",
    ]
    segments = assert_one_continuous_wandb_run(run_dir, list(range(10, 91, 10)))
    weight = {row["_step"]: row["train/spectrum_weight"] for s in segments for row in s.history}
    assert weight[60] > 0 and weight[70] > 0  # default: on since step 50
    assert weight[80] == 0 and weight[90] == 0  # delayed-spectrum: off until 100, from the first resumed step
    config = segments[-1].config
    assert config["curriculum_modified"] is True
    assert "delayed-spectrum" in config["curriculum_change"] and "at step 70" in config["curriculum_change"]
    assert config["job"]["curriculum"]["name"] == "delayed-spectrum"
    assert "curriculum_modified" not in segments[0].config
