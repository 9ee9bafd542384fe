"""The watchdog's limits (runtime/watchdog.py), read at chosen instants: what it counts as a hang and what
it must not (a long save after a stop request, code after the loop, the first steps under "auto"); and
its flags refused in one line when they are not positive numbers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support import cli

from trm_cluster.core.signals import StopRequest, StopSignals
from trm_cluster.runtime.watchdog import AUTO_FLOOR_S, AUTO_WARMUP_STEPS, RESTORE_FLOOR_S, Watchdog


def watchdog(grace: float | None = None, timeout: float | str | None = None) -> tuple[Watchdog, StopSignals]:
    signals = StopSignals()
    return Watchdog(signals, lambda hang: None, grace, timeout), signals


def later(seconds: float) -> float:
    return time.monotonic() + seconds


def test_the_stop_grace_counts_from_the_request_only_inside_a_step() -> None:
    dog, signals = watchdog(grace=5)
    dog.step_started(3)
    assert dog.check(later(100)) is None  # no request: a slow step is not the grace's business
    signals.request = StopRequest(12, time.time())
    assert dog.check(later(4)) is None
    hang = dog.check(later(6))
    assert hang is not None and hang.phase == "step" and hang.step == 3 and "--stop-grace-s 5" in hang.limit
    with dog.phase("save", 4):  # the boundary was reached: the stop's save is progress, however long
        assert dog.check(later(100)) is None
    dog.idle()  # the loop is left: the code after it is never watched
    assert dog.check(later(1000)) is None


def test_the_step_timeout_covers_the_restore_a_step_and_a_save_each_from_its_own_start() -> None:
    dog, _ = watchdog(timeout=10)
    with dog.phase("restore", 0):  # W&B's start and the checkpoint's read: a floor of its own
        assert dog.check(later(RESTORE_FLOOR_S - 1)) is None
        restore = dog.check(later(RESTORE_FLOOR_S + 1))
        assert restore is not None and restore.phase == "restore"
    dog.step_started(0)
    with dog.phase("save", 1):
        save = dog.check(later(11))
        assert save is not None and save.phase == "save" and save.step == 1
    assert dog.check(later(9)) is None  # back in the step, its clock restarted after the save
    step = dog.check(later(11))
    assert (
        step is not None
        and step.phase == "step"
        and step.describe() == ("step 0 did not return within --step-timeout-s 10")
    )


def test_auto_arms_after_the_warm_up_at_a_multiple_of_the_slowest_step_with_a_floor() -> None:
    dog, _ = watchdog(timeout="auto")
    for step in range(AUTO_WARMUP_STEPS):
        dog.step_started(step)
        assert dog.check(later(10 * AUTO_FLOOR_S)) is None  # compiling, warming caches: never a hang
    dog.step_started(AUTO_WARMUP_STEPS)
    assert dog.limit_s("step") == AUTO_FLOOR_S  # the steps were fast: the floor
    assert dog.check(later(AUTO_FLOOR_S - 1)) is None
    assert dog.check(later(AUTO_FLOOR_S + 1)) is not None


def test_a_watchdog_with_no_limit_never_starts_a_thread() -> None:
    dog, _ = watchdog()
    dog.start()
    assert not dog.armed and dog._thread is None


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--stop-grace-s", "-1", "stop_grace_s must be a positive number of seconds, got -1.0"),
        (
            "--step-timeout-s",
            "abc",
            "step_timeout_s must be a positive number of seconds or 'auto', got 'abc'",
        ),
        ("--step-timeout-s", "0", "step_timeout_s must be a positive number of seconds, got 0.0"),
    ],
)
def test_a_bad_limit_is_refused_in_one_line_and_writes_nothing(
    workdir: Path, flag: str, value: str, message: str
) -> None:
    script = workdir / "train.py"
    script.write_text("print('never run')\n")
    done = cli(
        "submit", "--script", str(script), "--executor", "local", "--run-dir", "run", flag, value, cwd=workdir
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [f"trm-submit: error: {message}"]
    assert not (workdir / "run").exists()
