"""Checkpoint files: atomic, digested, pruned, and a loader that falls back past bad ones."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from support import new_run

from trm_cluster.rundir.checkpoints import CheckpointError, CheckpointStore, sha256_of
from trm_cluster.rundir.manifest import CheckpointRecord, utc_now


def payload(step: int, run_uid: str = "uid") -> dict[str, object]:
    return {
        "model": {"w": torch.full((4,), float(step))},
        "trainer": {},
        "meta": {"step": step, "run_uid": run_uid},
    }


def store_with(tmp_path: Path, steps: list[int], keep: int = 10) -> CheckpointStore:
    store = CheckpointStore(new_run(tmp_path), keep_last=keep)
    for step in steps:
        store.save(step, payload(step))
    return store


def test_records_are_published_with_digest_and_size(tmp_path: Path) -> None:
    store = store_with(tmp_path, [10])
    (record,) = store.manifest.read().checkpoints
    path = tmp_path / record.file
    assert record.bytes == path.stat().st_size and record.sha256 == sha256_of(path)
    assert not list(store.directory.glob(".*.tmp"))


def test_keeps_only_the_last_k(tmp_path: Path) -> None:
    store = store_with(tmp_path, [10, 20, 30, 40], keep=2)
    assert [c.step for c in store.manifest.read().checkpoints] == [30, 40]
    on_disk = sorted(p.name for p in store.directory.iterdir())
    assert on_disk == [".spare-rank0", "step_000000030.pt", "step_000000040.pt"]  # one dropped file kept


def test_a_dropped_file_is_written_over_in_place_and_cut_to_the_new_checkpoint(tmp_path: Path) -> None:
    """Retention keeps the dropped file as the spare; the next save overwrites it (no new blocks to
    allocate) and truncates what the longer old checkpoint left beyond the new one's end."""
    store = CheckpointStore(new_run(tmp_path), keep_last=2)
    store.save(10, {**payload(10), "trainer": {"big": torch.zeros(100_000)}})
    first = (store.directory / "step_000000010.pt").stat()
    store.save(20, payload(20))
    store.save(30, payload(30))  # drops step 10: its file becomes the spare
    assert (store.directory / ".spare-rank0").stat().st_ino == first.st_ino
    store.save(40, payload(40))
    written = (store.directory / "step_000000040.pt").stat()
    assert written.st_ino == first.st_ino and written.st_size < first.st_size
    loaded = store.load_latest("uid")  # the digest and the size of what was written, and it loads
    assert loaded is not None and loaded.record.step == 40
    assert torch.equal(loaded.payload["model"]["w"], torch.full((4,), 40.0))
    assert not list(store.directory.glob(".*.tmp")) and store.remove_orphans() == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_latest_falls_back_to_the_previous_one(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_with(tmp_path, [10, 20, 30])
    latest = store.directory / "step_000000030.pt"
    if damage == "truncate":
        latest.write_bytes(latest.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(latest.read_bytes())
        data[len(data) // 2] ^= 0xFF
        latest.write_bytes(bytes(data))
    else:
        latest.unlink()
    with caplog.at_level(logging.WARNING, logger="trm_cluster.rundir.checkpoints"):
        loaded = store.load_latest("uid")
    assert loaded is not None and loaded.record.step == 20
    assert torch.equal(loaded.payload["model"]["w"], torch.full((4,), 20.0))
    assert "step_000000030.pt" in caplog.text and "falling back" in caplog.text


def test_no_usable_checkpoint_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    store = store_with(tmp_path, [10])
    (store.directory / "step_000000010.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="none of the 1 checkpoints"):
        store.load_latest("uid")


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    store = store_with(tmp_path, [10])
    with pytest.raises(CheckpointError, match="belongs to run 'uid', not to this run 'other'"):
        store.load_latest("other")


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/trm_cluster_pickle_exploit_marker")


def test_a_malicious_pickle_never_runs(tmp_path: Path) -> None:
    MARKER.unlink(missing_ok=True)
    store = store_with(tmp_path, [10])
    evil = store.directory / "step_000000020.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "meta": {"run_uid": "uid"}, "x": _Exploit()}, evil)
    record = CheckpointRecord(
        20, str(evil.relative_to(tmp_path)), evil.stat().st_size, sha256_of(evil), utc_now()
    )
    store.publish(record)  # an attacker who can also edit the manifest
    loaded = store.load_latest("uid")
    assert loaded is not None and loaded.record.step == 10
    assert not MARKER.exists()


def test_orphans_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    store = store_with(tmp_path, [10])
    (store.directory / ".step_000000020.pt.abc.tmp").write_bytes(b"half")
    torch.save(payload(30), store.directory / "step_000000030.pt")  # written, never published
    assert sorted(store.remove_orphans()) == [".step_000000020.pt.abc.tmp", "step_000000030.pt"]
    assert [p.name for p in store.directory.iterdir()] == ["step_000000010.pt"]
