"""The payload comparison every exactness test relies on (tests/support.py): one bit anywhere, a key too
many or too few, a dtype or shape that keeps the bytes; and a loader that never compares a missing file."""

from __future__ import annotations

import copy
import io
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from support import (
    RUN_IDENTITY,
    assert_same_state,
    assert_same_training_state,
    final_checkpoint_payload,
    new_run,
    state_differences,
)

from trm_cluster.core.rng import capture_rng
from trm_cluster.rundir.checkpoints import CheckpointStore, capture


def make_payload() -> dict[str, Any]:
    """Laid out as the job saves one: weights, trainer state (EMA, optimizer, data), RNG, journal, meta."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ema = torch.optim.swa_utils.AveragedModel(model)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    ema.update_parameters(model)
    state = {
        "model": model.state_dict(),
        "trainer": {"ema": ema.state_dict(), "optimizer": optimizer.state_dict(), "data": {"offset": 64}},
        "rng": capture_rng(),
        "tracking": {"journal": [{"step": 5, "metrics": {"train/loss": 0.25, "trainer/steps_per_s": 9.5}}]},
        "meta": {"step": 5, "run_uid": "a1", "saved_at": "2026-01-01T00:00:00.000+00:00"},
    }
    buffer = io.BytesIO()
    torch.save(capture(state), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def payload() -> dict[str, Any]:
    return make_payload()


def flip_one_bit(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        flipped = value.clone()
        flipped.reshape(-1).view(torch.uint8)[-1] ^= 1  # the last byte: not just the first element
        return flipped
    if isinstance(value, float):
        return struct.unpack("<d", struct.pack("<Q", struct.unpack("<Q", struct.pack("<d", value))[0] ^ 1))[0]
    return value ^ 1


def test_a_payload_equals_itself_saved_and_loaded_again(payload: dict[str, Any]) -> None:
    assert state_differences(make_payload(), payload) == []
    assert state_differences(payload, {**payload, "meta": {**payload["meta"], "saved_at": "later"}}) == []


@pytest.mark.parametrize(
    "path",
    [
        ("model", "weight"),  # float32
        ("trainer", "ema", "n_averaged"),  # int64, 0-dim
        ("trainer", "optimizer", "state", 0, "exp_avg"),
        ("trainer", "optimizer", "state", 1, "step"),
        ("rng", "torch"),  # uint8
        ("rng", "numpy", "keys"),
        ("rng", "python", "state", 623),  # a python int in a list
        ("meta", "step"),
        ("tracking", "journal", 0, "metrics", "train/loss"),  # a python float
    ],
)
def test_one_flipped_bit_is_found_at_its_path(payload: dict[str, Any], path: tuple[Any, ...]) -> None:
    changed = copy.deepcopy(payload)
    parent = changed
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = flip_one_bit(parent[path[-1]])
    (line,) = state_differences(payload, changed)
    assert line.startswith(".".join(map(str, path)) + ": ")


def test_missing_and_extra_keys_are_both_reported(payload: dict[str, Any]) -> None:
    changed = copy.deepcopy(payload)
    del changed["trainer"]["optimizer"]["state"][0]["exp_avg_sq"]
    changed["trainer"]["scaler"] = {"scale": torch.tensor(65536.0)}
    assert state_differences(payload, changed) == [
        "trainer.optimizer.state.0.exp_avg_sq: missing",
        "trainer.scaler: extra",
    ]
    with pytest.raises(AssertionError, match=r"2 difference\(s\)(.|\n)*trainer.scaler: extra"):
        assert_same_state(payload, changed)


def test_same_bytes_under_another_dtype_shape_or_type_differ(payload: dict[str, Any]) -> None:
    weight = payload["model"]["weight"]
    assert state_differences(weight, weight.view(torch.int32)) == [
        "<root>: torch.float32[3, 4] vs torch.int32[3, 4]"
    ]
    assert state_differences(weight, weight.reshape(4, 3)) == [
        "<root>: torch.float32[3, 4] vs torch.float32[4, 3]"
    ]
    assert state_differences([5, (1,)], [5.0, [1]]) == ["0: int 5 vs float 5.0", "1: tuple (1,) vs list [1]"]
    assert state_differences([1, 2], [1, 2, 3]) == ["<root>: 2 vs 3 items"]
    assert state_differences(0.0, -0.0) == ["<root>: 0.0 vs -0.0"]


def test_ignored_paths_are_skipped_and_nothing_else(payload: dict[str, Any]) -> None:
    other_run = copy.deepcopy(payload)
    other_run["meta"].update(run_uid="b2", saved_at="later")
    other_run["tracking"]["journal"][0]["metrics"]["trainer/steps_per_s"] = 12.0
    assert state_differences(payload, other_run) == [
        "tracking.journal.0.metrics.trainer/steps_per_s: 9.5 vs 12.0",
        "meta.run_uid: 'a1' vs 'b2'",
    ]
    timing = "tracking.journal.*.metrics.trainer/steps_per_s"
    assert state_differences(payload, other_run, ignore=(*RUN_IDENTITY, timing)) == []
    other_run["tracking"]["journal"][0]["metrics"]["train/loss"] = 0.5
    assert state_differences(payload, other_run, ignore=(*RUN_IDENTITY, timing)) == [
        "tracking.journal.0.metrics.train/loss: 0.25 vs 0.5"
    ]


def test_the_loader_reads_the_newest_published_checkpoint_and_refuses_a_missing_one(
    tmp_path: Path, payload: dict[str, Any]
) -> None:
    store = CheckpointStore(new_run(tmp_path), keep_last=3)
    with pytest.raises(AssertionError, match="publishes no checkpoint"):
        final_checkpoint_payload(tmp_path)
    store.save(4, {**payload, "meta": {**payload["meta"], "step": 4}})
    store.save(5, payload)
    assert_same_state(payload, final_checkpoint_payload(tmp_path))
    (tmp_path / "checkpoints" / "step_000000005.pt").write_bytes(b"")
    with pytest.raises(AssertionError, match="does not match its record"):
        final_checkpoint_payload(tmp_path)
    (tmp_path / "checkpoints" / "step_000000005.pt").unlink()
    with pytest.raises(AssertionError, match="the newest checkpoint in the manifest, is missing"):
        final_checkpoint_payload(tmp_path)


def journal(*rows: tuple[int, float, float]) -> list[dict[str, Any]]:
    return [
        {"step": s, "metrics": {"train/loss": loss, "trainer/steps_per_s": speed}} for s, loss, speed in rows
    ]


ALL_ROWS = journal((5, 0.3, 1.0), (10, 0.2, 2.0), (15, 0.1, 3.0))


@pytest.mark.parametrize(
    ("resumed", "error"),
    [
        # a bare row list (older checkpoints): the tail of the reference's
        (journal((10, 0.2, 7.0), (15, 0.1, 8.0)), None),  # the last process's rows, other timings
        (journal((10, 0.2, 7.0), (15, 0.2, 8.0)), r"journal_rows\.1\.metrics\.train/loss: 0\.1 vs 0\.2"),
        (journal((5, 0.3, 1.0), (10, 0.2, 2.0)), "journal_rows.0.step: 10 vs 5"),  # not the tail
        ([], "journals no W&B row"),
        # rows complete above a step: every reference row above it
        ({"rows": journal((10, 0.2, 7.0), (15, 0.1, 8.0)), "complete_above": 5}, None),
        ({"rows": journal((15, 0.1, 8.0)), "complete_above": 5}, "journal_rows: 2 vs 1 items"),
        ({"rows": journal((15, 0.1, 8.0)), "complete_above": 10, "x": 1}, "x: extra"),
    ],
)
def test_two_runs_compare_on_everything_but_identity_and_timings(
    tmp_path: Path, payload: dict[str, Any], resumed: Any, error: str | None
) -> None:
    reference = {"rows": ALL_ROWS, "complete_above": -1} if isinstance(resumed, dict) else ALL_ROWS
    for name, rows, uid in [("a", reference, "a1"), ("b", resumed, "b2")]:
        store = CheckpointStore(new_run(tmp_path / name), keep_last=1)
        store.save(5, {**payload, "tracking": {"journal": rows}, "meta": {**payload["meta"], "run_uid": uid}})
    if error is None:
        assert_same_training_state(tmp_path / "a", tmp_path / "b")
    else:
        with pytest.raises(AssertionError, match=error):
            assert_same_training_state(tmp_path / "a", tmp_path / "b")
