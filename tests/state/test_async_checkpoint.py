"""Periodic checkpoints written in the background (async_save.py): a true snapshot of their step,
training goes on while they are written, a request while one is in flight waits, a failed write fails
the run. (A SIGKILL mid-write, in the background, loses only that checkpoint and the resumed run is
bit-identical to one with synchronous saves: tests/rundir/test_kill_mid_write.py.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from support import manifest

from trm_cluster.core.job_context import JobContext
from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.rundir.creation import create_script_run
from trm_cluster.runtime.plan import SessionPlan
from trm_cluster.runtime.session import Session
from trm_cluster.state.background_save import HOLD_ENV, BackgroundSaver, snapshot_copy


def _weight_in(run_dir: Path, step: int) -> float:
    record = next(c for c in manifest(run_dir)["checkpoints"] if c["step"] == step)
    payload = torch.load(run_dir / record["file"], map_location="cpu", weights_only=True)
    return float(payload["trainer"]["weight"])


def test_a_background_save_holds_its_steps_state_while_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Save 1 is held unwritten (the seam) while step 1 runs and changes the weight in place; the
    request of save 2 then waits for it (counted once). Checkpoint 1 must hold the old value."""
    run_dir, hold = tmp_path / "run", tmp_path / "release"
    monkeypatch.setenv(HOLD_ENV, str(hold))
    create_script_run(run_dir, Path(__file__), [], {}, wandb=WandbOptions(mode="disabled"))
    weight = torch.zeros(1)
    plan = SessionPlan(run_dir, JobContext.detect(), quiet=True)
    with Session(plan, {"steps": 4, "checkpoint_every": 1, "keep_checkpoints": 5}) as run:
        run.restore(weight=weight)
        for step in run.steps():
            weight += 1
            if step == 1:
                assert run.saver.in_flight and manifest(run_dir)["checkpoints"] == []  # not yet written
                weight.add_(1000)  # in place, as an optimizer step does, while save 1 is unwritten
                released = threading.Thread(target=lambda: (run.saver.waiting.wait(120), hold.touch()))
                released.start()  # save 2's request waits for save 1: only then is save 1 let go
    released.join()
    assert [c["step"] for c in manifest(run_dir)["checkpoints"]] == [1, 2, 3, 4]
    assert [_weight_in(run_dir, s) for s in (1, 2, 3, 4)] == [1.0, 1002.0, 1003.0, 1004.0]
    stats = run.saver.stats
    assert (stats.started, len(stats.write_s)) == (3, 3)  # saves 1-3; step 4's (the end) is synchronous
    assert (
        1 <= stats.waited <= 3
    )  # save 2's request waited for save 1; 3 and 4 wait if their predecessor is unwritten


def test_a_request_while_a_save_is_in_flight_waits_and_a_failed_write_is_raised_on_the_training_thread() -> (
    None
):
    saver = BackgroundSaver()
    order: list[str] = []
    gate = threading.Event()

    def slow_write() -> None:
        gate.wait()
        order.append("first written")

    saver.begin()
    saver.start(slow_write, time.perf_counter())
    opener = threading.Thread(target=lambda: (saver.waiting.wait(120), gate.set()))
    opener.start()
    saver.begin()  # waits: the first save is in flight until the opener sees this request waiting
    order.append("second may start")
    opener.join()
    assert order == ["first written", "second may start"] and saver.stats.waited == 1

    def failing_write() -> None:
        raise OSError(28, "No space left on device")

    saver.start(failing_write, time.perf_counter())
    with pytest.raises(OSError, match="No space left"):
        saver.begin()
    saver.begin()  # raised once: the saver is usable again


def test_a_snapshot_reuses_the_previous_ones_host_memory_and_holds_the_new_values() -> None:
    buffers: dict[tuple[object, ...], torch.Tensor] = {}
    live = {"model": {"w": torch.arange(4.0)}, "optimizer": {"steps": [torch.ones(2, 3)]}}
    first = snapshot_copy(live, buffers).wait()
    live["model"]["w"].add_(10)  # the next step, in place
    assert first["model"]["w"].tolist() == [0.0, 1.0, 2.0, 3.0]  # a copy, not the live tensor
    second = snapshot_copy(live, buffers).wait()
    assert second["model"]["w"].data_ptr() == first["model"]["w"].data_ptr()  # the same host memory
    assert second["model"]["w"].tolist() == [10.0, 11.0, 12.0, 13.0]
    assert second["model"]["w"].data_ptr() != live["model"]["w"].data_ptr()
    live["optimizer"]["steps"][0] = torch.ones(3, 3)  # another shape: new memory
    third = snapshot_copy(live, buffers).wait()
    assert third["optimizer"]["steps"][0].shape == (3, 3) and len(buffers) == 2
