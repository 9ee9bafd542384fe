"""trm_cluster.wandb.tracker's small parts, in this process: the run id, the W&B mode a run gets (key in the
environment or ~/.netrc), the row journal a checkpoint carries, and a W&B run that stops accepting rows."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import wandb
from support import new_run

from trm_cluster.core.wandb_options import api_key_configured, new_run_id, resolve_mode
from trm_cluster.rundir.manifest import ConfigChange, ManifestData
from trm_cluster.wandb.files import find_segments, read_segment
from trm_cluster.wandb.tracker import (
    JOURNAL_ROWS,
    NullTracker,
    RowJournal,
    WandbStart,
    WandbTracker,
    change_annotations,
    drop_empty_wandb_env,
    resumed_tracker,
)


def test_run_ids_are_eight_lowercase_base36_characters_and_differ() -> None:
    ids = {new_run_id() for _ in range(300)}
    assert len(ids) == 300 and all(re.fullmatch("[a-z0-9]{8}", run_id) for run_id in ids)
    assert set("".join(ids)) == set("abcdefghijklmnopqrstuvwxyz0123456789")  # 2400 draws: each one


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of its own (no ~/.netrc yet), no W&B key or host in the environment."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return tmp_path


def test_auto_is_online_only_with_a_key_in_the_environment_or_netrc(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not api_key_configured() and resolve_mode("auto") == "offline"
    (home / ".netrc").touch(mode=0o600)  # netrc refuses a file with a password that others can read
    (home / ".netrc").write_text("machine example.org login user password secret\n")
    assert not api_key_configured()  # another host's key
    (home / ".netrc").write_text("machine api.wandb.ai login user password secret\n")
    assert api_key_configured() and resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org/sub/path")  # a server of one's own
    assert not api_key_configured()
    (home / ".netrc").write_text("machine wandb.example.org login user password secret\n")
    assert api_key_configured()
    monkeypatch.setenv("WANDB_BASE_URL", "wandb.example.org")  # no scheme
    assert api_key_configured()
    (home / ".netrc").write_text("machine\n")  # unreadable: no key
    assert not api_key_configured()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert api_key_configured() and resolve_mode("auto") == "online"


def test_auto_takes_wandbs_own_mode_variable_and_an_explicit_mode_wins(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    for variable, mode in (
        ("disabled", "disabled"),
        ("dryrun", "offline"),
        ("Offline", "offline"),
        ("", "online"),
    ):
        monkeypatch.setenv("WANDB_MODE", variable)
        assert resolve_mode("auto") == mode, variable
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("offline") == "offline"


def test_an_explicit_mode_is_kept_and_a_wrong_one_refused(home: Path) -> None:
    assert [resolve_mode(mode) for mode in ("online", "offline", "disabled")] == [
        "online",
        "offline",
        "disabled",
    ]
    with pytest.raises(ValueError, match=r"unknown W&B mode 'Offline' \(auto, online, offline, disabled\)"):
        resolve_mode("Offline")


def test_the_journal_keeps_the_last_rows_and_says_above_which_step_it_is_complete() -> None:
    journal = RowJournal(complete_above=-1)
    for step in range(1, JOURNAL_ROWS + 3):
        journal.add(step, {"loss": float(step)})
    journal.add(JOURNAL_ROWS + 2, {"lr": 0.5})  # a second call for the same step joins its row
    state = journal.state()
    assert state["complete_above"] == 2 and len(state["rows"]) == JOURNAL_ROWS
    assert state["rows"][0] == {"step": 3, "metrics": {"loss": 3.0}}
    assert state["rows"][-1] == {"step": JOURNAL_ROWS + 2, "metrics": {"loss": JOURNAL_ROWS + 2.0, "lr": 0.5}}
    assert RowJournal.restored(state).state() == state
    assert RowJournal.restored({}).state() == {"rows": [], "complete_above": -1}


def test_without_wandb_rows_above_the_durable_step_are_still_journaled() -> None:
    tracker = NullTracker(durable_step=5)
    for step in (4, 5, 6):
        tracker.log(step, {"x": float(step)})
    tracker.finish(preempting=True)
    assert tracker.journal() == {"rows": [{"step": 6, "metrics": {"x": 6.0}}], "complete_above": 5}
    again = NullTracker(durable_step=7, journal=tracker.journal())
    assert again.journal() == tracker.journal() and again.run is None and again.segment_dir is None


def test_empty_wandb_variables_are_dropped_and_no_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "")
    monkeypatch.setenv("WANDB_PROJECT", "kept")
    monkeypatch.setenv("NOT_WANDB_EMPTY", "")
    assert drop_empty_wandb_env() == ["WANDB_MODE"]
    assert "WANDB_MODE" not in os.environ and os.environ["WANDB_PROJECT"] == "kept"
    assert os.environ["NOT_WANDB_EMPTY"] == ""


def _with_changes(data: ManifestData, *changes: tuple[int, dict[str, list[object]]]) -> ManifestData:
    data.config_changes = [ConfigChange(at_step=step, time="t", changes=c) for step, c in changes]
    return data


def test_config_changes_are_annotated_by_their_field(tmp_path: Path) -> None:
    data = new_run(tmp_path / "run").read()
    assert change_annotations(data) == {}
    first = {"job.curriculum.x": [1, 2], "run.lr": [0.1, 0.2], "seed": [1, 2], "job": [{}, {"a": 1}]}
    _with_changes(data, (4, first), (9, {"job.curriculum.x": [2, 3]}))
    assert change_annotations(data) == {
        "curriculum_modified": True,
        "curriculum_change": "job.curriculum.x: 1 -> 2 at step 4; job.curriculum.x: 2 -> 3 at step 9",
        "lr_modified": True,
        "lr_change": "run.lr: 0.1 -> 0.2 at step 4",
        "seed_modified": True,
        "seed_change": "seed: 1 -> 2 at step 4",
        "job_modified": True,
        "job_change": "job: {} -> {'a': 1} at step 4",
        "config_modified": True,
    }


def _own_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No W&B key, host, mode or run from the environment; settings of its own; quiet."""
    for key in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))


def _started(data: ManifestData, run_dir: Path, journal: object = (), resume_step: int = 0) -> WandbTracker:
    """W&B started as the session starts it: ``wandb.init`` on its own thread (WandbStart), joined, then
    the checkpoint's journal replayed (resumed_tracker)."""
    tracker = resumed_tracker(
        WandbStart(data, run_dir, "allow", True, None).join(), data, journal, resume_step
    )
    assert isinstance(tracker, WandbTracker)
    return tracker


def test_start_opens_the_manifests_run_with_its_settings_and_replays_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _own_wandb(monkeypatch, tmp_path)
    run_dir = tmp_path / "run"
    data = _with_changes(new_run(run_dir).read(), (4, {"run.steps": [10, 20]}))
    data.wandb.mode, data.wandb.group, data.wandb.tags = "offline", "g", ["a", "b"]
    data.wandb.job_type, data.wandb.notes, data.wandb.entity = "train", "why", "team"
    rows = [{"step": step, "metrics": {"x": float(step)}} for step in (1, 2, 3)]
    tracker = _started(data, run_dir, journal={"rows": rows, "complete_above": 0}, resume_step=2)
    assert (tracker.watermark, tracker.replayed, tracker.run.name) == (-1, 2, "run")
    assert str(tracker.segment_dir).startswith("wandb/offline-run-")
    tracker.finish(preempting=False)
    wandb.teardown()
    (segment,) = [read_segment(path) for path in find_segments(run_dir)]
    assert (segment.run_id, segment.project, segment.resume, segment.steps) == ("abcd1234", "p", True, [1, 2])
    assert segment.entity == "team"
    assert (segment.group, segment.tags, segment.job_type, segment.notes) == ("g", ("a", "b"), "train", "why")
    assert segment.config["run"] == {"steps": 10} and segment.config["steps_modified"] is True
    assert (segment.exit_code, segment.preempting, tracker.durable_step) == (0, False, 2)
    data.wandb.mode, data.wandb.started = "disabled", True
    _started(data, run_dir).finish(preempting=False)
    assert capsys.readouterr().out.splitlines() == [
        "Starting new W&B run: abcd1234",
        "Resuming W&B run: abcd1234",
    ]


@pytest.mark.parametrize(("preempting", "failed"), [(True, False), (False, True)])
def test_a_preempted_or_failed_segment_ends_its_run_with_exit_code_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preempting: bool, failed: bool
) -> None:
    """What W&B shows: a preempted segment as preempted (then resumed), a failed one as crashed."""
    _own_wandb(monkeypatch, tmp_path)
    run = wandb.init(mode="offline", dir=str(tmp_path), project="p", settings=wandb.Settings(console="off"))
    tracker = WandbTracker(run, watermark=-1, run_dir=tmp_path)
    assert (tracker.replayed, tracker.skipped) == (0, 0)
    tracker.finish(preempting=preempting, failed=failed)
    wandb.teardown()
    (segment,) = [read_segment(path) for path in find_segments(tmp_path)]
    assert (segment.exit_code, segment.preempting) == (1, preempting)


ROWS = [{"step": step, "metrics": {"x": float(step)}} for step in (1, 2, 3, 4, 5)]


@pytest.mark.parametrize(
    ("journal", "watermark", "replayed", "complete_above"),
    [
        (
            {"rows": ROWS, "complete_above": 0},
            2,
            [3, 4],
            2,
        ),  # above the watermark, up to the checkpoint's step
        ({"rows": ROWS, "complete_above": 3}, 2, [3, 4], 3),  # older than the journal: may be lost
        ({"rows": ROWS}, -1, [1, 2, 3, 4], -1),
        (ROWS, -1, [1, 2, 3, 4], -1),  # an older checkpoint's bare rows: complete above nothing known
        ({}, 2, [], 2),
    ],
)
def test_start_replays_the_rows_the_disk_lacks(
    tmp_path: Path, journal: object, watermark: int, replayed: list[int], complete_above: int
) -> None:
    data = new_run(tmp_path / "run").read()
    data.wandb.mode, data.wandb.last_step = "disabled", watermark
    tracker = _started(data, tmp_path / "run", journal=journal, resume_step=4)
    assert [row["step"] for row in tracker.journal()["rows"]] == replayed and tracker.replayed == len(
        replayed
    )
    assert tracker.journal()["complete_above"] == complete_above
    tracker.finish(preempting=False)


@pytest.fixture
def finished_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[wandb.Run]:
    """A real offline run, already finished: it refuses every row (as one whose wandb-core died does)."""
    _own_wandb(monkeypatch, tmp_path)
    run = wandb.init(
        mode="offline", dir=str(tmp_path), project="broken", settings=wandb.Settings(console="off")
    )
    run.finish()
    yield run
    wandb.teardown()


def test_a_run_that_refuses_rows_stops_being_asked_and_nothing_counts_as_durable(
    tmp_path: Path, finished_run: wandb.Run, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = WandbTracker(finished_run, watermark=10, run_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="trm_cluster.wandb.tracker"):
        for step in (10, 11, 12):
            tracker.log(step, {"x": float(step)})
    stopped = [r.getMessage() for r in caplog.records if "stopped accepting rows" in r.getMessage()]
    assert len(stopped) == 1 and stopped[0].startswith("W&B stopped accepting rows at step 11 (")
    assert tracker.journal()["rows"] == [
        {"step": 11, "metrics": {"x": 11.0}},
        {"step": 12, "metrics": {"x": 12.0}},
    ]
    assert tracker.skipped == 1
    with caplog.at_level(logging.WARNING, logger="trm_cluster.wandb.tracker"):
        tracker.finish(preempting=True)
    assert tracker.durable_step == 10 and tracker.run is None  # the rows live in the journal only
    assert "W&B finish failed: Run (" in caplog.text and "`mark_preempting`" in caplog.text
