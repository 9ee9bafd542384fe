"""The test seam of every durable write (``TRM_CLUSTER_PAUSE_IN_WRITE``): a write it does not name never
waits. (That a named write is held is what tests/rundir/test_kill_mid_write.py relies on: were it not, that test
would never find the write it kills, and fail.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from trm_cluster.rundir.atomic import PAUSE_ENV, atomic_write_bytes, stale_temp_files


def test_a_write_the_pause_does_not_name_never_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PAUSE_ENV, "manifest.json:600")  # were this write held, the test would hang (timeout)
    target = tmp_path / "step_000000010.pt"
    atomic_write_bytes(target, b"x")
    assert target.read_bytes() == b"x" and not stale_temp_files(target)


def test_a_named_write_is_held_after_its_temp_file_is_whole_and_before_the_replace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pause (the seam tests/rundir/test_kill_mid_write.py kills a writer in) lasts the seconds given after the
    last ':', so a name may hold ':' too; the target is still the old file while it lasts."""
    target = tmp_path / "run:1.json"
    target.write_bytes(b"old")
    held: list[tuple[object, bytes, list[bytes]]] = []  # the seconds, the target, the temp files then

    def spy(seconds: object) -> None:
        held.append((seconds, target.read_bytes(), [p.read_bytes() for p in stale_temp_files(target)]))

    monkeypatch.setenv(PAUSE_ENV, "run:1.json:2.5")
    monkeypatch.setattr(time, "sleep", spy)
    atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert held == [(2.5, b"old", [b"new"])] and target.read_bytes() == b"new"
