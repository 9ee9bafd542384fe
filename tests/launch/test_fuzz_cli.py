"""Property tests over the commands' arguments: whatever a user types, the answer is a result or a clear
error (exit 2), never a raw traceback, and not a byte on disk changes (submit runs with --dry-run)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import answer_of, fuzz_examples, new_run, tree_digest

from trm_cluster import status, submit
from trm_cluster.chaos import driver as chaos

FLAGS = [
    "--preset", "--steps", "--seed", "--run-dir", "--resume", "--executor", "--time-min", "--signal-delay-s",
    "--max-failures", "--max-requeues", "--nodes", "--tasks-per-node", "--gpus-per-node", "--log-every",
    "--checkpoint-every", "--keep-checkpoints", "--sbatch", "--script", "--entry", "--wandb-mode",
    "--preemptions", "--lr", "--name", "--log-reduce", "--json",
]  # fmt: skip
VALUES = st.sampled_from(["-1", "0", "3", "1e9", "nan", "inf", "", "../../x", "regression", "tiny",
                          "local", "debug", "slurm", "mean", "a=b", "nope:fn", "x" * 300]) | st.text(max_size=8)  # fmt: skip


def _argv(run_dir: Path) -> Any:
    """Mostly flag-value pairs (what parses gets to the commands' own checks), sometimes loose tokens."""
    value = VALUES | st.just(str(run_dir))
    pairs = st.lists(st.tuples(st.sampled_from(FLAGS), value), max_size=3).map(
        lambda ps: [t for p in ps for t in p]
    )
    loose = st.lists(st.sampled_from(FLAGS) | value, max_size=4)
    return st.one_of(pairs, pairs, loose)


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("existing") / "run"
    new_run(run_dir)
    return run_dir


@fuzz_examples(60)
@given(data=st.data())
def test_any_arguments_give_a_result_or_one_clear_error_and_change_nothing(
    existing_run: Path, data: st.DataObject
) -> None:
    command, extra = data.draw(
        st.sampled_from([(submit.main, ["--dry-run"]), (status.main, []), (chaos.main, ["--hits", "-1"])])
    )
    argv = data.draw(_argv(existing_run))
    with tempfile.TemporaryDirectory() as cwd, contextlib.chdir(cwd):
        before = (tree_digest(existing_run), tree_digest(Path(cwd)))
        code, err = answer_of(command, [*argv, *extra])
        assert (tree_digest(existing_run), tree_digest(Path(cwd))) == before
    assert "Traceback" not in err, (argv, err)
    assert code in (0, 1, 2), (argv, code, err)
    if code and command is not status.main:
        assert err.strip(), (argv, "failed without saying why")
