"""``status`` of a Slurm run when Slurm does not answer: one line saying why, never a failure.
(The live answers themselves, from a real controller, are tested in tests/scheduler/test_slurm.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import new_run, tree_digest

from trm_cluster import status
from trm_cluster.scheduler.queue_state import QueueState, queue_state


def test_a_slurm_run_without_squeue_still_shows_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = new_run(tmp_path / "run")
    with manifest.update() as data:
        data.launch = {"executor": "slurm", "job_id": "4242"}
    before = tree_digest(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))  # a machine without Slurm's commands
    assert status.main([str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "slurm: no answer (squeue not found)" and err == ""
    assert status.main([str(tmp_path / "run"), "--json"]) == 0
    assert '"queue_error": "squeue not found"' in capsys.readouterr().out
    assert tree_digest(tmp_path) == before


def test_a_run_of_another_executor_asks_slurm_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = new_run(tmp_path / "run")
    with manifest.update() as data:
        data.launch = {"executor": "local", "job_id": "4242"}
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    assert status.main([str(tmp_path / "run")]) == 0
    assert "slurm" not in capsys.readouterr().out


def test_the_queue_line_says_state_reason_node_and_time_left() -> None:
    pending = QueueState("7", "PENDING", "squeue", reason="Priority", time_left="4:00:00", elapsed="0:00")
    assert pending.render() == "slurm: job 7 PENDING (Priority) elapsed 0:00 time left 4:00:00  [squeue]"
    running = QueueState(
        "7", "RUNNING", "squeue", reason="None", nodes="node1", time_left="1:59", elapsed="2:01"
    )
    assert running.render() == "slurm: job 7 RUNNING on node1 elapsed 2:01 time left 1:59  [squeue]"


def test_queue_state_reports_why_when_the_binary_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert queue_state("1") == (None, "squeue not found")
