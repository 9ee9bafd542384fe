"""The run manifest: lost-update-free under concurrent writer processes, atomic, and strict on read."""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest
from support import new_run

from trm_cluster.rundir.manifest import ManifestError, RunManifest


def _bump(run_dir: str, writer: int, times: int, ready: Any) -> None:
    manifest = RunManifest(Path(run_dir))
    ready.wait()  # every writer imported and waiting: their updates overlap, whatever the machine's load
    for _ in range(times):
        with manifest.update() as data:
            data.launch["counter"] = data.launch.get("counter", 0) + 1
            data.launch.setdefault("writers", []).append(writer)


def test_concurrent_writer_processes_lose_no_update(tmp_path: Path) -> None:
    new_run(tmp_path)
    writers, times = 4, 15
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(writers)
    processes = [context.Process(target=_bump, args=(str(tmp_path), w, times, ready)) for w in range(writers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
        assert p.exitcode == 0
    data = RunManifest(tmp_path).read()
    assert data.launch["counter"] == writers * times
    assert sorted(data.launch["writers"]) == sorted(w for w in range(writers) for _ in range(times))
    assert not list(tmp_path.glob(".manifest.json.*.tmp"))  # no temp file left behind


def test_lock_timeout_gives_a_clear_error(tmp_path: Path) -> None:
    new_run(tmp_path)
    holder = RunManifest(tmp_path)
    waiter = RunManifest(tmp_path, lock_timeout_s=0.2)
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.update():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    inside.wait(10)
    try:
        with (
            pytest.raises(ManifestError, match=r"could not lock .*manifest.json.lock within 0 s"),
            waiter.update(),
        ):
            pass
    finally:
        release.set()
        thread.join()


def test_create_refuses_an_existing_run(tmp_path: Path) -> None:
    new_run(tmp_path)
    before = (tmp_path / "manifest.json").read_bytes()
    with pytest.raises(ManifestError, match="already holds a run"):
        new_run(tmp_path)
    assert (tmp_path / "manifest.json").read_bytes() == before


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda text: text[: len(text) // 2], "not valid JSON"),
        (lambda text: json.dumps({**json.loads(text), "schema_version": 99}), "newer than this trm_cluster"),
        (
            lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "schema_version"}),
            "no schema_version",
        ),
        (lambda text: json.dumps({**json.loads(text), "config": {"run": {"steps": 11}}}), "config_hash"),
        (lambda text: json.dumps({**json.loads(text), "surprise": 1}), "bad field"),
    ],
)
def test_bad_manifests_are_refused_and_left_alone(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    manifest = new_run(tmp_path)
    corrupt = mutate(manifest.path.read_text())
    manifest.path.write_text(corrupt)
    with pytest.raises(ManifestError, match=message):
        manifest.read()
    with pytest.raises(ManifestError, match=message), manifest.update():
        pass
    assert manifest.path.read_text() == corrupt


def test_missing_manifest_says_so(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="holds no run"):
        RunManifest(tmp_path).read()
