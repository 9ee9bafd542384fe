"""The resume doctor (``python -m trm_cluster.doctor``), run as a user runs it: real processes, real
checkpoints, no mocks. The example script resumes exactly; its two planted bugs are found and named;
a preset resumes exactly; the global RNG drawn after restore and a loop that is not deterministic
are told apart; a crash and bad input are answered with their own exit status."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from trm_cluster.doctor_compare import (
    Tally,
    compare_payloads,
    compare_runs,
    divergence_causes,
    warning_causes,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "trm_cluster" / "examples" / "train_script.py"


def doctor(*args: str, cwd: Path, tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SUBMITIT_", "SLURM_"))}
    env.update(PYTHONUNBUFFERED="1")
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    return subprocess.run(
        [sys.executable, "-m", "trm_cluster.doctor", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A working directory for the runs, and the TMPDIR in which the doctor makes its workspace."""
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    return cwd, tmp


def _script(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


# -- the example script and its planted bugs ------------------------------------------------------------


@pytest.mark.slow
def test_example_script_resumes_exactly(dirs: tuple[Path, Path]) -> None:
    cwd, tmp = dirs
    done = doctor("--script", str(EXAMPLE), "--steps", "6", "--at", "3", cwd=cwd, tmp=tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exact: steps 4..6 after the resume at step 3" in done.stdout
    assert "4 checkpoints (" in done.stdout  # step 3 and the three after it
    assert "left out: timings trainer/steps_per_s" in done.stdout
    assert "wall time" in done.stdout
    assert not list(tmp.glob("trm-doctor-*"))  # the workspace is gone


@pytest.mark.slow
def test_plain_dataloader_is_not_exact_and_named(dirs: tuple[Path, Path]) -> None:
    cwd, tmp = dirs
    done = doctor(
        "--script",
        str(EXAMPLE),
        "--steps",
        "6",
        "--at",
        "3",
        "--script-args",
        "--plain-loader",
        cwd=cwd,
        tmp=tmp,
    )
    # two workers and a plain DataLoader: the resumed process starts a new pass over the data
    assert done.returncode == 1, done.stdout + done.stderr
    assert "NOT EXACT: first divergence at step 4, 1 step(s) after the resume at step 3" in done.stdout
    assert "- a plain torch DataLoader (the resumed process warned" in done.stdout
    assert "model.0.weight:" in done.stdout
    assert "metric loss at step 4" in done.stdout


@pytest.mark.slow
def test_forgotten_scheduler_is_not_exact_and_named_by_its_lr(dirs: tuple[Path, Path]) -> None:
    cwd, tmp = dirs
    done = doctor(
        "--script", str(EXAMPLE), "--steps", "6", "--at", "3", "--script-args", "--forget-scheduler",
        cwd=cwd, tmp=tmp,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "NOT EXACT: first divergence at step 4, 1 step(s) after the resume at step 3" in out
    assert "- state the loop does not register with run.restore(...): the runs agree at step 3" in out
    assert "metric lr at step 4:" in out
    assert "trainer.optimizer.param_groups.0.lr:" in out
    assert "- probably an LR scheduler: metric lr" in out
    assert "plain torch DataLoader" not in out


# -- a preset ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_preset_regression_resumes_exactly(dirs: tuple[Path, Path]) -> None:
    cwd, tmp = dirs
    done = doctor("--preset", "regression", "--steps", "30", "--at", "12", cwd=cwd, tmp=tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exact: steps 13..30 after the resume at step 12" in done.stdout
    assert "19 checkpoints (" in done.stdout
    assert list(cwd.iterdir()) == [] and not list(tmp.glob("trm-doctor-*"))


# -- causes told apart in small scripts of our own ----------------------------------------------------------

LOOP = """
    import random, sys, time
    import torch
    import trm_cluster

    torch.manual_seed({seed})
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with trm_cluster.session(steps=100) as run:
        run.restore(model=model, optimizer=optimizer)
        {after_restore}
        for step in run.steps():
            loss = model(torch.randn(8, 4)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log({{"loss": loss.item()}})
"""


@pytest.mark.slow
def test_rng_drawn_after_restore_is_named(dirs: tuple[Path, Path]) -> None:
    cwd, tmp = dirs
    script = _script(cwd / "train.py", LOOP.format(seed=0, after_restore="torch.rand(1)"))
    done = doctor("--script", str(script), "--steps", "4", "--at", "2", "--keep", str(tmp / "kept"), cwd=cwd)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "first divergence at step 3, 1 step(s) after the resume at step 2" in out
    assert "- random numbers drawn between run.restore() and the loop (the resumed process warned" in out
    assert "- the global RNG: rng.torch" in out
    kept = tmp / "kept"
    assert f"kept the runs and their logs in {kept}" in out
    assert sorted(p.name for p in (kept / "logs").iterdir()) == [
        "run-A.err", "run-A.out", "run-B-resumed.err", "run-B-resumed.out", "run-B.err", "run-B.out",
    ]  # fmt: skip
    assert (
        "the global RNG was drawn from between run.restore()"
        in (kept / "logs" / "run-B-resumed.err").read_text()
    )


@pytest.mark.slow
def test_a_loop_that_is_not_deterministic_is_told_apart_from_a_bad_resume(dirs: tuple[Path, Path]) -> None:
    cwd, tmp = dirs
    script = _script(cwd / "train.py", LOOP.format(seed="time.time_ns() % 2**31", after_restore="pass"))
    done = doctor("--script", str(script), "--steps", "4", "--at", "2", cwd=cwd, tmp=tmp)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "NOT EXACT: first divergence at step 1, before the resume (at step 2)" in done.stdout
    assert "- the loop is not deterministic: the two runs differ at step 1, before any resume" in done.stdout
    assert "state the loop does not register" not in done.stdout


# -- what cannot be tested, and bad input --------------------------------------------------------------------


def test_a_crashing_script_exits_3_with_its_last_lines(dirs: tuple[Path, Path]) -> None:
    cwd, tmp = dirs
    script = _script(
        cwd / "crash.py", "import sys\nprint('loading data', flush=True)\nsys.exit('no data in ./data')\n"
    )
    done = doctor("--script", str(script), "--steps", "4", cwd=cwd, tmp=tmp)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "cannot test: run B (stopped after step 2) crashed (exit status 1)" in done.stdout
    assert "    | no data in ./data" in done.stdout
    assert not list(tmp.glob("trm-doctor-*"))


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--script", str(EXAMPLE), "--steps", "6", "--at", "6"],
            "--at 6: the stop must fall inside the run, 1..5",
        ),
        (
            ["--script", str(EXAMPLE), "--steps", "6", "--at", "0"],
            "--at 0: the stop must fall inside the run",
        ),
        (["--script", "missing.py"], "--script missing.py: no such file"),
        (["--preset", "no-such-preset"], "unknown preset 'no-such-preset'"),
        (["--preset", "regression", "--script-args", "--lr", "1"], "a --preset takes none"),
        (["--steps", "4"], "one of the arguments --preset --script is required"),
        (["--preset", "regression", "--steps", "1"], "--steps 1: a resume test needs at least 2 steps"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    dirs: tuple[Path, Path], args: list[str], message: str
) -> None:
    cwd, tmp = dirs
    done = doctor(*args, cwd=cwd, tmp=tmp)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("trm-doctor: error: ")
    assert message in done.stderr
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []


# -- the comparison itself, on payloads laid out as the session saves them ---------------------------------------


def _payload(step: int, lr: float = 0.1, weight: float = 1.0, rows: int | None = None) -> dict[str, Any]:
    rows = step if rows is None else rows
    return {
        "model": {"0.weight": torch.full((2, 2), weight)},
        "trainer": {"optimizer": {"param_groups": [{"lr": lr, "params": [0]}], "state": {}}},
        "rng": {"torch": torch.zeros(4, dtype=torch.uint8)},
        "tracking": {
            "journal": {
                "rows": [
                    {
                        "step": s,
                        "metrics": {"lr": lr if s == step else 0.1, "trainer/steps_per_s": float(s * 7)},
                    }
                    for s in range(step - rows + 1, step + 1)
                ],
                "complete_above": -1,
            },
            "window": {},
        },
        "meta": {"step": step, "saved_at": f"t{step}", "run_uid": "a", "run_name": "a"},
    }


def test_compare_payloads_names_every_kind_of_difference_by_its_dotted_path() -> None:
    tally = Tally()
    a, b = _payload(1), _payload(1, weight=1.5)
    b["meta"] = {**b["meta"], "saved_at": "later", "run_uid": "b", "run_name": "b"}
    b["trainer"]["extra"] = 1
    found = compare_payloads(a, b, ("meta.saved_at", "meta.run_uid", "meta.run_name"), tally)
    assert [d.path for d in found] == ["model.0.weight", "trainer.extra"]
    assert found[0].detail == "4 of 4 values differ, max |difference| 0.5"
    assert found[1].detail == "only in the resumed run"
    assert tally.tensors == 2
    same = torch.zeros(3).view(torch.int32)
    assert compare_payloads(torch.zeros(3), same)[0].detail == "torch.float32[3] vs torch.int32[3]"
    assert compare_payloads(-0.0, 0.0)[0].path == "<root>"  # floats by their bits


def test_compare_runs_leaves_out_identity_and_timings_and_finds_the_first_divergence() -> None:
    a = {s: _payload(s) for s in range(1, 6)}
    assert compare_runs(a, {s: _payload(s, rows=s - 2 if s > 2 else None) for s in a}, 2, 5).exact
    # a scheduler started afresh: the LR (in the optimizer and in the logged row) differs from step 3 on
    b = {s: _payload(s, lr=0.1 if s <= 2 else 0.2) for s in a}
    verdict = compare_runs(a, b, 2, 5)
    assert not verdict.exact and verdict.diverging_after_resume == [3, 4, 5]
    first = verdict.first
    assert first is not None and first.step == 3
    assert [d.path for d in first.state] == ["trainer.optimizer.param_groups.0.lr"]
    assert [(m.name, m.row_step) for m in first.metrics] == [("lr", 3)]
    assert verdict.ignored_metrics == ["trainer/steps_per_s"]
    titles = [c.title for c in divergence_causes(verdict)]
    assert titles[0].startswith(
        "state the loop does not register with run.restore(...): the runs agree at step 2"
    )
    assert titles[1].startswith("probably an LR scheduler: metric lr")


def test_warning_causes_are_read_from_the_resumed_process_stderr() -> None:
    stderr = (
        "run.restore(data=...): a plain torch DataLoader cannot resume exactly\n"
        "run.restore(data=...): this DataLoader has no generator of its own, so ...\n"
        "the global RNG was drawn from between run.restore() and the first step\n"
    )
    titles = [c.title for c in warning_causes(stderr)]
    assert [t.split(" (")[0] for t in titles] == [
        "a plain torch DataLoader",
        "a DataLoader without its own generator",
        "random numbers drawn between run.restore() and the loop",
    ]
    assert warning_causes("all fine\n") == []
