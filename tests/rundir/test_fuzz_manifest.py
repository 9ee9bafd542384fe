"""Property tests over what a manifest on disk may hold (hand edits, truncation, another version, paths
that leave the run): it is read into well-typed data or refused with a ManifestError, the commands
answer a user with one line (never a raw traceback), and not a byte of the run changes."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import answer_of, fuzz_examples, new_run, tree_digest

from trm_cluster import status, submit, sync
from trm_cluster.rundir.manifest import CheckpointRecord, ManifestError, RunManifest, Segment

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
ESCAPING = st.sampled_from(
    ["../../x", "/etc/passwd", "checkpoints/../../x", "..", "", "a/../../b", "..\\..\\x", "/tmp/step.pt"]
) | st.text(min_size=1, max_size=8).map(lambda t: f"../{t}")


@pytest.fixture(scope="module")
def valid_manifest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real manifest with a segment, a checkpoint (with a rank part) and a W&B folder."""
    run_dir = tmp_path_factory.mktemp("valid") / "run"
    manifest = new_run(run_dir)
    with manifest.update() as data:
        data.segments.append(Segment(0, "42", None, 0, "host", 1, "local", "2026-01-01T00:00:00+00:00", 0,
                                     "2026-01-01T00:01:00+00:00", 5, "preempted", "SIGUSR2", None, "wandb/run-1"))  # fmt: skip
        data.checkpoints.append(CheckpointRecord(5, "checkpoints/step_000000005.pt", 10, "ab" * 32, "2026-01-01T00:01:00+00:00",
                                                 [{"rank": 1, "file": "checkpoints/step_000000005.rank1.pt", "bytes": 3, "sha256": "cd"}]))  # fmt: skip
        data.status = "requeued"
    raw: dict[str, Any] = json.loads(manifest.path.read_text())
    return raw


@contextlib.contextmanager
def run_holding(text: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "manifest.json").write_text(text)
        yield run_dir


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        found += [p for key, item in value.items() for p in paths_of(item, (*prefix, key))]
    elif isinstance(value, list):
        found += [p for index, item in enumerate(value) for p in paths_of(item, (*prefix, index))]
    return found


def replaced(raw: dict[str, Any], path: tuple[Any, ...], value: Any, delete: bool = False) -> dict[str, Any]:
    changed = copy.deepcopy(raw)
    parent = changed
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return changed


def read_or_refuse(run_dir: Path) -> bool:
    """True when read, False when refused; anything but a ManifestError fails the test."""
    try:
        RunManifest(run_dir).read()
    except ManifestError:
        return False
    return True


def assert_commands_answer_in_one_line(run_dir: Path) -> None:
    before = tree_digest(run_dir)
    for command, argv in (
        (status.main, [str(run_dir)]),
        (status.main, [str(run_dir), "--json"]),
        (sync.main, [str(run_dir), "--dry-run"]),
        (submit.main, ["--resume", str(run_dir), "--dry-run"]),
    ):
        code, err = answer_of(command, argv)
        assert "Traceback" not in err, (argv, err)
        if code != 0:
            assert len(err.strip().splitlines()) == 1 and "error" in err, (argv, err)
    assert tree_digest(run_dir) == before


@fuzz_examples(40)
@given(data=st.data())
def test_a_field_replaced_by_any_json_value_is_read_well_typed_or_refused(
    valid_manifest: dict[str, Any], data: st.DataObject
) -> None:
    path = data.draw(st.sampled_from(paths_of(valid_manifest)))
    value = data.draw(JSON)
    delete = data.draw(st.booleans())
    changed = replaced(valid_manifest, path, value, delete=delete)
    with run_holding(json.dumps(changed)) as run_dir:
        if read_or_refuse(run_dir) and not delete:  # (a deleted field with a default reads as the default)
            assert RunManifest(run_dir).read().to_dict() == changed  # read as written, nothing coerced
        assert_commands_answer_in_one_line(run_dir)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("segments", 0, "\r"), 1),  # an unknown key holding a line break: the error stayed one line?
        (("config_changes",), {}),  # an empty object where a list belongs was read as an empty list
        (("checkpoints",), "ab"),
    ],
)
def test_what_the_fuzzing_found_stays_refused_in_one_line(
    valid_manifest: dict[str, Any], path: tuple[Any, ...], value: Any
) -> None:
    with run_holding(json.dumps(replaced(valid_manifest, path, value))) as run_dir:
        assert not read_or_refuse(run_dir)
        assert_commands_answer_in_one_line(run_dir)


@fuzz_examples(15)
@given(cut=st.integers(min_value=0))
def test_a_truncated_manifest_is_refused(valid_manifest: dict[str, Any], cut: int) -> None:
    text = json.dumps(valid_manifest, indent=2)
    with run_holding(text[: cut % len(text)]) as run_dir:
        assert not read_or_refuse(run_dir)
        assert_commands_answer_in_one_line(run_dir)


@fuzz_examples(40)
@given(version=st.integers(-(2**64), 2**64) | JSON)
def test_an_unknown_schema_version_is_refused(valid_manifest: dict[str, Any], version: Any) -> None:
    changed = {**valid_manifest, "schema_version": version}
    with run_holding(json.dumps(changed)) as run_dir:
        readable = read_or_refuse(run_dir)
        assert readable == (type(version) is int and version <= 1)


@fuzz_examples(20)
@given(where=st.sampled_from(["checkpoint", "part", "wandb"]), path=ESCAPING)
def test_a_path_leaving_the_run_directory_is_refused(
    valid_manifest: dict[str, Any], where: str, path: str
) -> None:
    key = {
        "checkpoint": ("checkpoints", 0, "file"),
        "part": ("checkpoints", 0, "parts", 0, "file"),
        "wandb": ("segments", 0, "wandb_dir"),
    }[where]
    with run_holding(json.dumps(replaced(valid_manifest, key, path))) as run_dir:
        with pytest.raises(ManifestError, match="must be a path inside the run directory"):
            RunManifest(run_dir).read()
        assert_commands_answer_in_one_line(run_dir)


def test_a_new_run_directory_and_its_manifest_allow_no_group_or_world_write(tmp_path: Path) -> None:
    previous = os.umask(0)  # the most permissive umask a user may have
    try:
        manifest = new_run(tmp_path / "deep" / "run")
        with manifest.update() as data:
            data.status = "requeued"
        from trm_cluster.rundir.atomic import atomic_write_bytes

        atomic_write_bytes(tmp_path / "deep" / "run" / "checkpoints" / "x.pt", b"x")
    finally:
        os.umask(previous)
    for path in (
        tmp_path / "deep",
        tmp_path / "deep" / "run",
        manifest.path,
        tmp_path / "deep" / "run" / "checkpoints",
    ):
        assert stat.S_IMODE(path.stat().st_mode) & 0o022 == 0, (path, oct(path.stat().st_mode))
