"""atomic_writer makes a write durable: the temp file is fsynced (full) before it replaces the target,
and the directory is fsynced after the replace, so the rename itself survives a crash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trm_cluster.rundir.atomic import atomic_writer


def test_the_file_is_fsynced_before_the_replace_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")
    synced: list[tuple[str, bytes | None, bytes]] = []  # what was fsynced, what it held, the target then
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        synced.append((str(path), path.read_bytes() if path.is_file() else None, target.read_bytes()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    with atomic_writer(target) as handle:
        handle.write(b"new")
    monkeypatch.undo()
    (temp, temp_bytes, before), (directory, _, after) = synced
    assert Path(temp).parent == tmp_path and Path(temp).name.startswith(".manifest.json.")
    assert temp_bytes == b"new" and before == b"old"  # all written, not yet in place
    assert directory == str(tmp_path) and after == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
