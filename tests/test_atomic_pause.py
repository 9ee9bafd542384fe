"""The test seam of every durable write (``TRM_CLUSTER_PAUSE_IN_WRITE``): a write it does not name never
waits. (That a named write is held is what tests/test_kill_mid_write.py relies on: were it not, that test
would never find the write it kills, and fail.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from trm_cluster.atomic import PAUSE_ENV, atomic_write_bytes, stale_temp_files


def test_a_write_the_pause_does_not_name_never_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PAUSE_ENV, "manifest.json:600")  # were this write held, the test would hang (timeout)
    target = tmp_path / "step_000000010.pt"
    atomic_write_bytes(target, b"x")
    assert target.read_bytes() == b"x" and not stale_temp_files(target)
