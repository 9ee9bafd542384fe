"""Every field of a manifest survives a write and a read, and a manifest written before the lists
existed (no segments, checkpoints or config changes yet) still reads (tests/rundir/test_manifest.py: locking,
atomicity, refusals)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from support import new_run

from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.rundir.manifest import (
    CheckpointRecord,
    ConfigChange,
    RunManifest,
    Segment,
    WandbInfo,
    config_hash,
    utc_now,
)


def test_every_field_survives_a_write_and_a_read(tmp_path: Path) -> None:
    manifest = new_run(tmp_path)
    with manifest.update() as data:
        data.segments.append(
            Segment(0, "7", 2, 1, "node", 42, "slurm", "t0", 0, "t1", 5, "timeout", "SIGUSR2")
        )
        data.checkpoints.append(CheckpointRecord(5, "checkpoints/step_000000005.pt", 10, "ab", "t1"))
        data.config_changes.append(ConfigChange(5, "t2", {"run.steps": [10, 20]}))
        data.requeues["timeout"] = 1
        written = data.to_dict()
    assert RunManifest(tmp_path).read().to_dict() == written
    assert manifest.read().step == 5 and manifest.read().open_segment is None


def test_a_manifest_without_the_lists_reads_as_empty_ones(tmp_path: Path) -> None:
    new_run(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    for key in ("segments", "checkpoints", "config_changes"):
        del raw[key]
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    data = RunManifest(tmp_path).read()
    assert (data.segments, data.checkpoints, data.config_changes, data.step) == ([], [], [], 0)


def test_the_config_hash_is_canonical_and_stays_what_existing_manifests_hold() -> None:
    """Every manifest on disk records it: another canonical form would call them all corrupt."""
    assert config_hash({"run": {"steps": 10}, "job": {}}) == config_hash({"job": {}, "run": {"steps": 10}})
    assert (
        config_hash({"run": {"steps": 10}, "job": {}})
        == (
            "d788ed879ebdfacaefadfa61b3a186fde57de8a21b74afefe2e3d9edf106f94a"  # sha256 of {"job":{},"run":{"steps":10}}
        )
    )


def test_the_file_is_for_people_too_and_its_times_are_utc(tmp_path: Path) -> None:
    run_dir = tmp_path / "not" / "yet" / "there"
    new_run(run_dir)
    text = (run_dir / "manifest.json").read_text()
    assert text.startswith('{\n  "name": "there",\n  "run_uid": "uid",\n') and text.endswith("}\n")
    assert utc_now().endswith("+00:00") and RunManifest(run_dir).read().created_at.endswith("+00:00")


def test_the_wandb_options_reach_wandb_init_as_a_unit_and_unset_ones_are_left_to_wandb() -> None:
    options = WandbOptions(
        project="p", entity="team", group="g", tags=("a", "b"), job_type="train", notes="n"
    )
    info = WandbInfo.chosen(options, run_id="abcd1234", mode="offline")
    given = {f.name for f in dataclasses.fields(WandbOptions)} - {"mode"}  # "auto" is resolved at creation
    assert info.init_arguments() == {"id": "abcd1234", "mode": "offline", "project": "p", "entity": "team",
                                     "group": "g", "tags": ["a", "b"], "job_type": "train", "notes": "n"}  # fmt: skip
    assert given <= set(info.init_arguments())  # an option added to WandbOptions must reach wandb.init too
    bare = WandbInfo.chosen(WandbOptions(project="p"), run_id="abcd1234", mode="disabled")
    assert bare.init_arguments() == {"id": "abcd1234", "mode": "disabled", "project": "p", "entity": None}


def test_the_wandb_record_keeps_its_json_fields(tmp_path: Path) -> None:
    """Manifests on disk hold exactly these keys; an older one without the options still reads."""
    new_run(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert list(raw["wandb"]) == ["project", "entity", "run_id", "mode", "last_step", "started", "group",
                                  "tags", "job_type", "notes"]  # fmt: skip
    for key in ("group", "tags", "job_type", "notes"):
        del raw["wandb"][key]
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    info = RunManifest(tmp_path).read().wandb
    assert (info.group, info.tags, info.job_type, info.notes) == (None, [], None, None)
