"""``submit --sweep KEY=V1,V2``: the cartesian product, its element names, its refusals, and a real sweep
(debug executor: the elements one after the other, in the CLI's process). The job array on a real Slurm,
with one element preempted, is in test_slurm.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import cli, manifest, tree_digest

from trm_cluster import status, submit
from trm_cluster.launch import sweep
from trm_cluster.workloads.regression import RegressionConfig
from trm_cluster.workloads.trm.config import TRMConfig

FAST = ("--preset", "regression", "--executor", "debug", "--steps", "10", "--checkpoint-every", "5")


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed 2 x 2 sweep of lr and seed, W&B offline-free (disabled): 4 runs of 10 steps."""
    work = tmp_path_factory.mktemp("sweep")
    result = cli(
        "submit", *FAST, "--no-wandb", "--run-dir", str(work / "grid"), "--name", "grid",
        "--sweep", "lr=0.01,0.02", "--sweep=seed=1,2", cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return work / "grid"


def single_config(capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, object]:
    """The config a single submit with these flags resolves (its --dry-run prints it; in this process)."""
    assert submit.main([*FAST, *flags, "--dry-run"]) == 0
    lines = [line[2:] for line in capsys.readouterr().out.splitlines() if line.startswith("#   ")]
    return json.loads("\n".join(lines))  # type: ignore[no-any-return]


def test_each_element_is_the_run_a_single_submit_with_its_flags_would_be(
    done: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["lr=0.01,seed=1", "lr=0.01,seed=2", "lr=0.02,seed=1", "lr=0.02,seed=2"]
    record = json.loads((done / "sweep.json").read_text())
    assert [e["dir"] for e in record["elements"]] == names  # the product, the first axis slowest
    assert record["axes"] == [
        {"key": "lr", "values": ["0.01", "0.02"]},
        {"key": "seed", "values": ["1", "2"]},
    ]
    runs = [manifest(done / name) for name in names]
    assert [r["status"] for r in runs] == ["completed"] * 4
    assert runs[2]["config"] == single_config(capsys, "--lr", "0.02", "--seed", "1")
    assert len({r["run_uid"] for r in runs}) == len({r["wandb"]["run_id"] for r in runs}) == 4
    assert {r["wandb"]["group"] for r in runs} == {"grid"} and runs[0]["name"] == "grid-lr=0.01,seed=1"
    assert [e["job_id"] for e in record["elements"]] == [r["launch"]["job_id"] for r in runs]


def test_status_of_a_sweep_folder_lists_its_elements(done: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert status.main([str(done)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sweep grid: 4 elements of lr=0.01,0.02 x seed=1,2; debug executor"
    names = ["lr=0.01,seed=1", "lr=0.01,seed=2", "lr=0.02,seed=1", "lr=0.02,seed=2"]
    assert [line.split()[:2] for line in lines[2:]] == [[name, "completed"] for name in names]
    assert status.main([str(done.parent)]) == 0  # the folder above lists them too, under the sweep's name
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [f"grid/{name}" for name in names]


def test_the_product_and_the_names() -> None:
    rest, axes = sweep.split_sweep_flags(["--steps", "5", "--sweep", "lr=1,2", "--sweep=curriculum=a,b,c"])
    assert rest == ["--steps", "5"]
    grid = sweep.elements(axes)
    assert (
        len(grid) == 6
        and grid[0] == {"lr": "1", "curriculum": "a"}
        and grid[-1] == {"lr": "2", "curriculum": "c"}
    )
    assert (
        sweep.element_name({"lr": "1e-3", "curriculum": "delayed-spectrum"})
        == "lr=1e-3,curriculum=delayed-spectrum"
    )
    odd = [sweep.element_name({"data": v}) for v in ("a/b", "a b", "a_b")]
    assert odd[2] == "data=a_b" and odd[0].startswith("data=a_b-") and len(set(odd)) == 3  # kept apart
    assert "/" not in odd[0] and len(sweep.element_name({"x": "9" * 500})) == sweep.NAME_LIMIT
    assert sweep.element_argv({"sync_checkpoints": "false", "lr": "2"}, RegressionConfig) == [
        "--no-sync-checkpoints", "--lr", "2"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sweep", "learning-rate=0.1,0.2"], "--sweep learning-rate: not a config flag"),
        (["--sweep", "partition=a,b"], "--sweep partition: not a config flag"),
        (["--sweep", "lr="], "--sweep lr: empty value"),
        (["--sweep", "lr=0.1,,0.2"], "--sweep lr: empty value"),
        (["--sweep", "lr"], "expected KEY=V1,V2"),
        (["--sweep", "lr=1,1"], "a value is repeated"),
        (["--sweep", "lr=1,2", "--sweep", "lr=3"], "--sweep names lr twice"),
        (["--sweep", "lr=1,2", "--lr", "3"], "--sweep lr and --lr both given"),
        (["--sweep", "sync-checkpoints=maybe"], "'maybe' is not a boolean"),
        (["--sweep", "lr=1,2", "--preemptions", "9"], "--preemptions 9 needs a run of at least 19 steps"),
        (["--sweep", "lr=1,2", "--resume", "{done}"], "does not combine with --resume"),
        (["--sweep", "lr=1,2", "--fork", "{done}/lr=0.01,seed=1"], "does not combine with --fork"),
        (["--sweep", "lr=1,2", "--run-dir", "{done}"], "is not empty (holds lr=0.01,seed=1"),
    ],
)
def test_bad_sweeps_are_refused_in_one_line_and_write_nothing(
    done: Path, flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [f.replace("{done}", str(done)) for f in flags]
    target = tmp_path / "refused"
    if "--run-dir" not in flags:
        flags += ["--run-dir", str(target)]
    before = tree_digest(done)
    assert submit.main([*FAST, *flags]) == 2
    out, err = capsys.readouterr()
    (line,) = err.strip().splitlines()
    assert out == "" and line.startswith("trm-submit: error: ") and message in line, err
    assert tree_digest(done) == before and not target.exists()


def test_resuming_a_sweep_resumes_its_unfinished_elements_as_one_new_submission(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--resume SWEEP_DIR``: the failed element is resumed (its flags recorded as changes), the completed
    one is left as it was; with nothing left to resume, refused in one line."""
    sweep_dir = tmp_path / "faults"
    first = cli("submit", *FAST, "--no-wandb", "--max-failures", "1", "--run-dir", str(sweep_dir),
                "--sweep", "fail-at-step=-1,5", cwd=tmp_path)  # fmt: skip
    assert first.returncode == 1 and "fail-at-step=5: failed at step 5/10" in first.stdout, first.stdout
    done = tree_digest(sweep_dir / "fail-at-step=-1")
    resumed = cli("submit", "--resume", str(sweep_dir), "--fail-at-step", "-1", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "fail-at-step=5: config change at step 5: job.fail_at_step: 5 -> -1" in resumed.stdout
    data = manifest(sweep_dir / "fail-at-step=5")
    assert [s["end_reason"] for s in data["segments"]] == ["failed", "completed"]
    assert data["checkpoints"][-1]["step"] == 10
    assert tree_digest(sweep_dir / "fail-at-step=-1") == done
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert [s["elements"] for s in record["submissions"]] == [
        ["fail-at-step=-1", "fail-at-step=5"],
        ["fail-at-step=5"],
    ]
    again = cli("submit", "--resume", str(sweep_dir), cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.strip().endswith(
        "is completed; pass --steps N to train them further"
    )


def test_a_dry_run_shows_each_element_and_the_one_array_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "grid"
    assert (
        submit.main(
            [*FAST, "--run-dir", str(target), "--sweep", "lr=1,2", "--sweep", "seed=3,4", "--dry-run"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"# {target}/lr=2,seed=3: --lr 2 --seed 3" in out and "#SBATCH --array=0-3%4" in out
    assert f"#SBATCH --output={target}/logs/%A_%a_0_log.out" in out and not target.exists()


def test_a_local_sweep_runs_each_element_as_its_own_job(tmp_path: Path) -> None:
    """The local executor's batch: one controller process (job) per element, all started at once."""
    sweep_dir = tmp_path / "local"
    result = cli("submit", *FAST[:2], "--executor", "local", *FAST[4:], "--no-wandb", "--run-dir", str(sweep_dir),
                 "--sweep", "seed=1,2", "--wait", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [manifest(sweep_dir / name) for name in ("seed=1", "seed=2")]
    jobs = [r["launch"]["job_id"] for r in runs]
    assert len(set(jobs)) == 2 and [[s["job_id"] for s in r["segments"]] for r in runs] == [[j] for j in jobs]
    assert all((sweep_dir / "logs" / f"{job}_0_log.out").is_file() for job in jobs)


def test_a_shorthand_and_its_name_field_are_one_setting_to_sweep() -> None:
    """``--curriculum X`` sets ``curriculum.name``: sweeping both would leave the grid's winner to chance."""
    _, axes = sweep.split_sweep_flags(["--sweep", "curriculum=a,b", "--sweep", "curriculum.name=c,d"])
    with pytest.raises(ValueError, match=r"^--sweep curriculum and curriculum.name are one setting"):
        sweep.check_axes(axes, [], TRMConfig)
    _, axes = sweep.split_sweep_flags(["--sweep", "curriculum=a,b", "--sweep", "lr=1,2"])
    sweep.check_axes(axes, [], TRMConfig)  # each once: accepted
