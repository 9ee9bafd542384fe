"""The resume doctor (``python -m trm_cluster.doctor``) on real loops: its runs are real processes
with real checkpoints, no mocks. The example script resumes exactly; its two planted bugs are found
and named; a preset resumes exactly; the global RNG drawn after restore and a loop that is not
deterministic are told apart; a crash and bad input are answered with their own exit status.

The command runs in the test's own process (``main(argv)``, the ``python -m`` entry point less its
``sys.exit``; one bad request goes through ``python -m`` itself): the seconds of importing torch once
more per test are saved, and the runs it starts are the same. Each test runs the fewest steps that
show its point: N = K + 1 for a divergence right after the resume (K = 2 where a step must lie before
it); N = K + 2 for an exact resume: the step run from the restored state and one more from the resumed
process's own (with two DataLoader workers, one batch of each)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from support import REPO

from trm_cluster.doctor.causes import divergence_causes, warning_causes
from trm_cluster.doctor.cli import default_stops, main, parse
from trm_cluster.doctor.compare import Tally, compare_payloads, compare_runs

EXAMPLE = REPO / "examples" / "train_script.py"


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


class Doctor:
    """``python -m trm_cluster.doctor ARGS``, run from ``cwd``, its temporary workspace made in ``tmp``."""

    def __init__(self, cwd: Path, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.cwd, self.tmp, self._capsys = cwd, tmp, capsys

    def __call__(self, *args: str) -> Done:
        self._capsys.readouterr()
        code = main(list(args))
        out, err = self._capsys.readouterr()
        return Done(code, out, err)


@pytest.fixture
def doctor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Doctor]:
    # A short TMPDIR: DataLoader workers hand tensors over through an AF_UNIX socket made in TMPDIR,
    # whose path may not pass 107 bytes (pytest-xdist's tmp_path is deep enough to pass it).
    cwd, tmp = tmp_path / "cwd", Path(tempfile.mkdtemp(prefix="doctor-", dir="/tmp"))
    cwd.mkdir()
    for key in list(os.environ):
        if key.startswith(("WANDB_", "SUBMITIT_", "SLURM_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("TMPDIR", str(tmp))  # the runs' too, as a doctor started with TMPDIR=tmp gives them
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # tempfile caches the directory it found first
    yield Doctor(cwd, tmp, capsys)
    shutil.rmtree(tmp, ignore_errors=True)


def _script(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


# -- the example script and its planted bugs ------------------------------------------------------------


@pytest.mark.slow
def test_example_script_resumes_exactly(doctor: Doctor) -> None:
    # two steps after the resume: with the example's two DataLoader workers, one batch of each
    done = doctor("--script", str(EXAMPLE), "--steps", "3", "--at", "1", "--control")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exact: steps 2..3 after the resume at step 1" in done.stdout
    # the control (the RNG restore skipped: the example's dropout draws from it) is caught at once
    assert (
        "control: resumed at step 1 with the RNG restore skipped, it diverges (model weights at step 2"
        in done.stdout
    )
    assert "3 checkpoints (" in done.stdout  # step 1 and the two after it
    assert "left out: timings trainer/steps_per_s" in done.stdout
    assert "wall time" in done.stdout
    assert not list(doctor.tmp.glob("trm-doctor-*"))  # the workspace is gone


@pytest.mark.slow
def test_plain_dataloader_is_not_exact_and_named(doctor: Doctor) -> None:
    done = doctor(
        "--script", str(EXAMPLE), "--steps", "2", "--at", "1", "--script-args", "--plain-loader",
        "--num-workers", "0",
    )  # fmt: skip
    # a plain DataLoader (workers or none): the resumed process starts a new pass over the data
    assert done.returncode == 1, done.stdout + done.stderr
    assert "NOT EXACT: first divergence at step 2, 1 step(s) after the resume at step 1" in done.stdout
    assert "- a plain torch DataLoader (the resumed process warned" in done.stdout
    assert "model.0.weight:" in done.stdout
    assert "metric loss at step 2" in done.stdout


@pytest.mark.slow
def test_forgotten_scheduler_is_not_exact_and_named_by_its_lr(doctor: Doctor) -> None:
    done = doctor(
        "--script", str(EXAMPLE), "--steps", "2", "--at", "1", "--script-args", "--forget-scheduler",
        "--num-workers", "0",
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "NOT EXACT: first divergence at step 2, 1 step(s) after the resume at step 1" in out
    assert "- state the resume does not bring back: the runs agree at step 1" in out
    assert "metric lr at step 2:" in out
    assert "trainer.optimizer.param_groups.0.lr:" in out
    assert "- probably an LR scheduler: metric lr" in out
    assert "plain torch DataLoader" not in out


# -- a preset ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_preset_regression_resumes_exactly_without_a_final_evaluation(doctor: Doctor) -> None:
    """The final evaluation comes after the last checkpoint, which ends the comparison: no doctor's run
    pays for it (the regression workload evaluates; the tiny preset's took seconds in each run)."""
    kept = doctor.tmp / "kept"
    done = doctor("--preset", "regression", "--steps", "3", "--at", "1", "--keep", str(kept))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exact: steps 2..3 after the resume at step 1" in done.stdout
    assert "3 checkpoints (" in done.stdout
    assert list(doctor.cwd.iterdir()) == []
    outputs = {path.name: path.read_text() for path in (kept / "logs").glob("*.out")}
    assert len(outputs) == 3 and all(
        "step 3/3" in text for name, text in outputs.items() if name != "run-B.out"
    )
    assert not [name for name, text in outputs.items() if "eval" in text], outputs


# -- causes told apart in small scripts of our own ----------------------------------------------------------

# The update is by hand: constructing a torch.optim optimizer imports torch._dynamo, seconds per process.
LOOP = """
    import time
    import torch
    import trm_cluster

    torch.manual_seed({seed})
    model = torch.nn.Linear(4, 1)
    with trm_cluster.session(steps=100) as run:
        run.restore(model=model)
        {after_restore}
        for step in run.steps():
            loss = model(torch.randn(8, 4)).pow(2).mean()
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter -= 0.1 * parameter.grad
            run.log({{"loss": loss.item()}})
"""


@pytest.mark.slow
def test_rng_drawn_after_restore_is_named(doctor: Doctor) -> None:
    script = _script(doctor.cwd / "train.py", LOOP.format(seed=0, after_restore="torch.rand(1)"))
    kept = doctor.tmp / "kept"
    # --cold: every process a fresh interpreter, as before the warm start (the default elsewhere)
    done = doctor("--script", str(script), "--steps", "2", "--at", "1", "--keep", str(kept), "--cold")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "first divergence at step 2, 1 step(s) after the resume at step 1" in out
    assert "- random numbers drawn between run.restore() and the loop (the resumed process warned" in out
    assert "- the global RNG: rng.torch" in out
    assert f"kept the runs and their logs in {kept}" in out
    assert sorted(p.name for p in (kept / "logs").iterdir()) == [
        "run-A.err", "run-A.out", "run-B-resumed.err", "run-B-resumed.out", "run-B.err", "run-B.out",
    ]  # fmt: skip
    assert (
        "the global RNG was drawn from between run.restore()"
        in (kept / "logs" / "run-B-resumed.err").read_text()
    )


@pytest.mark.slow
def test_a_loop_that_is_not_deterministic_is_told_apart_from_a_bad_resume(doctor: Doctor) -> None:
    script = _script(
        doctor.cwd / "train.py", LOOP.format(seed="time.time_ns() % 2**31", after_restore="pass")
    )
    done = doctor("--script", str(script), "--steps", "3", "--at", "2")  # K = 2: step 1 lies before it
    assert done.returncode == 1, done.stdout + done.stderr
    assert "NOT EXACT: first divergence at step 1, before the resume (at step 2)" in done.stdout
    assert "- the loop is not deterministic: the two runs differ at step 1, before any resume" in done.stdout
    assert "state the loop does not register" not in done.stdout


@pytest.mark.slow
def test_a_loop_that_depends_on_the_hash_seed_still_differs_between_the_warm_runs(doctor: Doctor) -> None:
    """The warm start forks each process from a warm interpreter: runs A and B get one each, with their
    own PYTHONHASHSEED, so a loop seeded from str hashing (set and dict order alike) is still caught."""
    script = _script(
        doctor.cwd / "train.py", LOOP.format(seed='hash("peptide") % 2**31', after_restore="pass")
    )
    done = doctor("--script", str(script), "--steps", "3", "--at", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "- the loop is not deterministic: the two runs differ at step 1, before any resume" in done.stdout


# -- what cannot be tested, and bad input --------------------------------------------------------------------


def test_a_crashing_script_exits_3_with_its_last_lines(doctor: Doctor) -> None:
    script = _script(
        doctor.cwd / "crash.py",
        "import sys\nprint('loading data', flush=True)\nsys.exit('no data in ./data')\n",
    )
    done = doctor("--script", str(script), "--steps", "4")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "cannot test: run B (stopped after step 2) crashed (exit status 1)" in done.stdout
    assert "    | no data in ./data" in done.stdout
    assert not list(doctor.tmp.glob("trm-doctor-*"))


BAD_INPUT = [
    (
        ["--script", str(EXAMPLE), "--steps", "6", "--at", "6"],
        "--at 6: the stop must fall inside the run, 1..5",
    ),
    (["--script", str(EXAMPLE), "--steps", "6", "--at", "0"], "--at 0: the stop must fall inside the run"),
    (["--script", "missing.py"], "--script missing.py: no such file"),
    (["--preset", "no-such-preset"], "unknown preset 'no-such-preset'"),
    (["--preset", "regression", "--script-args", "--lr", "1"], "a --preset takes none"),
    (["--steps", "4"], "one of the arguments --preset --script is required"),
    (["--preset", "regression", "--steps", "1"], "--steps 1: a resume test needs at least 2 steps"),
]


def test_bad_input_exits_2_with_one_line_writes_nothing_and_starts_no_process(
    doctor: Doctor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_process(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"bad input started a process: {args}")

    with monkeypatch.context() as patched:
        patched.setattr(subprocess, "Popen", no_process)
        for args, message in BAD_INPUT:
            done = doctor(*args)
            assert done.returncode == 2, (args, done.stdout + done.stderr)
            assert done.stdout == "", args
            assert done.stderr.count("\n") == 1 and done.stderr.startswith("trm-doctor: error: "), args
            assert message in done.stderr, args
            assert list(doctor.cwd.iterdir()) == [] and list(doctor.tmp.iterdir()) == [], args
    # and once through the command itself, as a user types it (an argparse error: usage is not printed)
    command = subprocess.run(
        [sys.executable, "-m", "trm_cluster.doctor", "--steps", "4"],
        cwd=doctor.cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert command.returncode == 2 and command.stdout == "", command.stdout + command.stderr
    assert command.stderr == "trm-doctor: error: one of the arguments --preset --script is required\n"
    assert list(doctor.cwd.iterdir()) == [] and list(doctor.tmp.iterdir()) == []


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
    assert titles[0].startswith("state the resume does not bring back: the runs agree at step 2")
    assert titles[1].startswith("probably an LR scheduler: metric lr")


def test_warning_causes_are_read_from_the_resumed_process_stderr() -> None:
    stderr = (
        "run.restore(data=...): a plain torch DataLoader cannot resume exactly\n"
        "the global RNG was drawn from between run.restore() and the first step\n"
    )
    titles = [c.title for c in warning_causes(stderr)]
    assert [t.split(" (")[0] for t in titles] == [
        "a plain torch DataLoader",
        "random numbers drawn between run.restore() and the loop",
    ]
    assert warning_causes("all fine\n") == []


def test_two_stops_compare_each_resumed_process_by_its_own_rows_and_list_every_kind_first() -> None:
    a = {s: _payload(s) for s in range(1, 9)}
    # run B: stopped after 3 and after 5; each resumed process journals only the rows it logged itself
    rows = {s: s if s <= 3 else s - 3 if s <= 5 else s - 5 for s in a}
    assert compare_runs(a, {s: _payload(s, rows=rows[s]) for s in a}, (3, 5), 8).exact
    # a loader counter off from step 4, the weights only from step 7 on: both named, each at its first step
    b = {s: _payload(s, rows=rows[s], weight=1.0 if s < 7 else 2.0) for s in a}
    for s in range(4, 9):
        b[s]["trainer"]["data"] = {"_num_yielded": s + 1}
        a[s]["trainer"]["data"] = {"_num_yielded": s}
    verdict = compare_runs(a, b, (3, 5), 8)
    assert verdict.stops == (3, 5) and verdict.first is not None and verdict.first.step == 4
    assert verdict.first_by_kind() == {"data": (4, 1), "model weights": (7, 1)}
    assert verdict.stop_before(7) == 5 and verdict.stop_before(4) == 3


def test_the_default_is_two_stops_close_together_and_at_takes_a_list() -> None:
    assert default_stops(20) == (10, 12) and default_stops(8) == (4, 5) and default_stops(2) == (1,)
    assert parse(["--script", str(EXAMPLE), "--steps", "20", "--at", "14,7"]).stops == (7, 14)


CURRICULUM = REPO / "examples" / "curriculum_stream.py"


def test_the_curriculum_example_resumes_exactly_through_two_stops_in_one_stage(doctor: Doctor) -> None:
    # the script's own --steps 12 puts its stages at 3, 6 and 9
    done = doctor(
        "--script", str(CURRICULUM), "--steps", "12", "--at", "4,5", "--script-args", "--steps", "12"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exact: steps 5..12 after the resumes at steps 4, 5 match the uninterrupted run" in done.stdout


def test_an_unregistered_curriculum_is_caught_by_the_second_stop_with_each_kind_named(
    doctor: Doctor, tmp_path: Path
) -> None:
    script = tmp_path / "curriculum_forgotten.py"  # the planted bug: the curriculum's stage not registered
    registered = 'curriculum=trm_cluster.attributes(curriculum, "stage"))'
    assert CURRICULUM.read_text().count(registered) == 1
    script.write_text(CURRICULUM.read_text().replace(registered, ")"))
    done = doctor("--script", str(script), "--steps", "12", "--at", "4,5", "--script-args", "--steps", "12")
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    # the resumed curriculum starts at stage 0: the first resumed step "changes stage" and makes a new
    # iterator, so the data, and from it every weight, differ from the first step after the first stop
    assert "NOT EXACT: first divergence at step 5, 1 step(s) after the resume at step 4" in out, out
    assert "first divergence of each kind" in out
    assert "    model weights: step 5" in out and "    ema: step 5" in out and "    optimizer: step 5" in out
    assert "    data consumed: step 5 (1)" in out  # the batches themselves, not only the loader's counters
    assert (
        "- state the loop does not register: curriculum.stage (Curriculum), saved as 1, 0 as the resumed"
        in out
    )


@pytest.mark.slow
def test_a_control_that_does_not_diverge_makes_the_loop_untestable(doctor: Doctor) -> None:
    """The FSDP2 example draws its data from a registered generator and no dropout: skipping the RNG
    restore changes nothing the comparison sees, so its "exact" would prove nothing of the RNG: exit 3."""
    done = doctor(
        "--script", str(REPO / "examples" / "fsdp_script.py"), "--steps", "4", "--at", "2", "--control"
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "exact: steps 3..4 after the resume at step 2" in done.stdout
    assert (
        "control: resumed at step 2 with the RNG restore skipped, it still matches the uninterrupted run"
        in done.stdout
    )
