"""What tests/rundir/test_checkpoint.py leaves out: the checkpoint of several ranks (each rank's own part,
loaded by step), capturing a state for a background writer, and what the orphan sweep leaves alone."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import torch
from support import new_run

from trm_cluster.rundir.checkpoints import (
    PARALLEL_HASH_BYTES,
    CheckpointError,
    CheckpointStore,
    capture,
    checkpoint_name,
    sha256_of,
)
from trm_cluster.state.background_save import snapshot_copy


def _payload(step: int) -> dict[str, object]:
    return {"model": {"w": torch.full((2,), float(step))}, "meta": {"step": step, "run_uid": "uid"}}


def _two_rank_store(run_dir: Path, steps: tuple[int, ...] = (10,)) -> CheckpointStore:
    store = CheckpointStore(new_run(run_dir), keep_last=5)
    for step in steps:
        part = store.write_part(step, 1, {"rng": torch.tensor([step, 1])})
        store.save(step, _payload(step), parts=[part])
    return store


def test_each_rank_loads_the_chosen_step_with_its_own_part(tmp_path: Path) -> None:
    store = _two_rank_store(tmp_path, steps=(10, 20))
    assert (checkpoint_name(10), checkpoint_name(10, 1)) == ("step_000000010.pt", "step_000000010.rank1.pt")
    zero, one = store.load_step(10, 0, "uid"), store.load_step(10, 1, "uid")
    assert datetime.fromisoformat(zero.record.created_at) <= datetime.fromisoformat(one.record.created_at)
    assert zero.record.step == one.record.step == 10 and "rank_part" not in zero.payload
    assert torch.equal(one.payload["rank_part"]["rng"], torch.tensor([10, 1]))
    assert torch.equal(one.payload["model"]["w"], torch.full((2,), 10.0))
    for step, rank, uid, message in [
        (30, 0, "uid", "checkpoint of step 30 is not usable on rank 0"),
        (10, 1, "other", "checkpoint of step 10 is not usable on rank 1"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            store.load_step(step, rank, uid)
    # a rank the saving run did not have (a world-size change allowed later): no part of its own to load
    assert "rank_part" not in store.load_step(10, 2, "uid").payload


def test_a_rank_part_that_fails_its_digest_is_refused_and_a_missing_one_falls_back(tmp_path: Path) -> None:
    store = _two_rank_store(tmp_path, steps=(10, 20))
    part = tmp_path / "checkpoints" / "step_000000020.rank1.pt"
    data = part.read_bytes()
    part.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one bit pattern flipped: the digest fails
    with pytest.raises(CheckpointError, match=r"rank 1's part of checkpoint 20 \(checkpoints/step_000000020"):
        store.load_step(20, 1, "uid")
    part.unlink()  # rank 0's file of step 20 is whole, but the checkpoint is not: step 10 it is
    loaded = store.load_latest("uid")
    assert loaded is not None and loaded.record.step == 10


def test_a_background_writer_gets_copies_the_training_cannot_change() -> None:
    weights = torch.zeros(2)
    state = {"model": [weights], "pair": (weights, 3)}
    # what state/saves.py hands each writer: a background save's copy, a synchronous save's capture
    copied, shared = snapshot_copy(state).wait(), capture(state)
    weights += 1
    assert torch.equal(copied["model"][0], torch.zeros(2)) and torch.equal(copied["pair"][0], torch.zeros(2))
    assert copied["pair"][1] == 3
    assert shared["model"][0].data_ptr() == weights.data_ptr()  # the synchronous save copies nothing
    assert type(copied["pair"]) is tuple and type(copied["model"]) is list


def test_pruning_removes_every_rank_file_of_an_old_checkpoint_even_one_already_gone(tmp_path: Path) -> None:
    store = _two_rank_store(tmp_path, steps=(10,))
    store.keep_last = 1
    (tmp_path / "checkpoints" / "step_000000010.pt").unlink()  # removed by hand meanwhile
    part = store.write_part(20, 1, {"rng": torch.tensor([20, 1])})
    store.save(20, _payload(20), parts=[part])
    assert sorted(p.name for p in store.directory.iterdir()) == [
        ".spare-rank1",  # rank 1's dropped file, for its next write to overwrite in place
        "step_000000020.pt",
        "step_000000020.rank1.pt",
    ]


def test_a_checkpoint_without_meta_or_without_a_usable_file_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(new_run(tmp_path), keep_last=5)
    store.save(10, {"model": {}})  # no meta: whose run it is, nobody knows
    with pytest.raises(CheckpointError, match="belongs to run None, not to this run 'uid'"):
        store.load_latest("uid")
    with pytest.raises(CheckpointError, match="checkpoint of step 10 is not usable on rank 0"):
        store.load_step(10, 0, "uid")
    (tmp_path / "checkpoints" / "step_000000010.pt").write_bytes(b"torn")
    with pytest.raises(CheckpointError, match="checkpoint of step 10 is not usable on rank 0"):
        store.load_step(10, 0, "uid")
    message = r"none of the 1 checkpoints recorded in .*manifest.json is usable \(all missing or corrupt\); refusing"
    with pytest.raises(CheckpointError, match=message + " to restart from scratch"):
        store.load_latest("uid")


def test_the_orphan_sweep_leaves_published_parts_and_other_files_alone(tmp_path: Path) -> None:
    store = _two_rank_store(tmp_path)
    extra = ["notes.txt", ".keep", "x.tmp", ".step_000000020.pt.abc.tmp", "step_000000020.pt"]
    for name in extra:
        (store.directory / name).write_bytes(b"x")
    assert sorted(store.remove_orphans()) == [".step_000000020.pt.abc.tmp", "step_000000020.pt"]
    left = sorted(p.name for p in store.directory.iterdir())
    assert left == [".keep", "notes.txt", "step_000000010.pt", "step_000000010.rank1.pt", "x.tmp"]


def test_large_writes_hashed_beside_the_write_give_the_file_digest_and_load_back(tmp_path: Path) -> None:
    """Tensors of several MB take the parallel hash (PARALLEL_HASH_BYTES); the recorded digest is the
    file's own, in order, and the checkpoint loads back equal (a swapped or skipped chunk would not)."""
    big = {f"w{i}": torch.randn(3 * PARALLEL_HASH_BYTES // 4 + i) for i in range(3)}  # ~3 MB each
    store = CheckpointStore(new_run(tmp_path), keep_last=2)
    record = store.save(10, {"model": big, "meta": {"step": 10, "run_uid": "uid"}})
    assert record.bytes > 9 * PARALLEL_HASH_BYTES
    assert record.sha256 == sha256_of(tmp_path / record.file)
    loaded = store.load_latest("uid")
    assert loaded is not None and all(torch.equal(loaded.payload["model"][k], v) for k, v in big.items())
