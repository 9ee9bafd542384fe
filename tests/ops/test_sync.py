"""The sync command against a real run: three offline segments written by the real wandb, no mocks.

Why real files: the plan must follow the manifest's segment order whatever the directory names and clocks
say, and honour the ``.wandb.synced`` marker wandb itself writes. A real upload needs a W&B server, which
these machines cannot reach: the one test that starts ``wandb sync`` points it at a closed local port.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pytest
from support import clean_env, cli, manifest, tree_digest

from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.wandb.files import find_segments

# An unreachable server, should anything ever try to upload.
NO_SERVER = {"WANDB_BASE_URL": "http://127.0.0.1:9"}


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed run preempted twice in-process: three segments, three offline .wandb files."""
    work = tmp_path_factory.mktemp("sync_src")
    result = cli(
        "submit", "--preset", "regression", "--executor", "debug", "--wandb-mode", "offline",
        "--run-dir", "RUN", "--name", "sync", "--preemptions", "2", "--steps", "60", cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(manifest(work / "RUN")["segments"]) == 3, result.stdout
    return work / "RUN"


@pytest.fixture
def run(offline_run: Path, tmp_path: Path) -> Path:
    """A private copy, so each test may add markers or edit the manifest."""
    return Path(shutil.copytree(offline_run, tmp_path / "RUN", symlinks=True))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty HOME: no ~/.netrc, so no API key unless a test sets one."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def sync(run_dir: Path, *args: str, home: Path, **env: str) -> tuple[int, str, str]:
    result = cli(
        "sync", str(run_dir), *args, cwd=run_dir.parent, timeout=60, HOME=str(home), **NO_SERVER, **env
    )
    return result.returncode, result.stdout, result.stderr


def plan_rows(stdout: str) -> list[tuple[int, str, str]]:
    """(index, wandb_dir, action) of each segment line of a --dry-run plan."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("  #"):
            fields = line.split()
            rows.append((int(fields[0][1:]), fields[1], " ".join(fields[5:])))
    return rows


def wandb_files(run_dir: Path) -> list[Path]:
    """Each segment's .wandb file, in manifest order."""
    data = manifest(run_dir)
    return [run_dir / s["wandb_dir"] / f"run-{data['wandb']['run_id']}.wandb" for s in data["segments"]]


def mark_synced(file: Path) -> None:
    file.with_suffix(".wandb.synced").touch()


def assert_refused(code: int, stdout: str, stderr: str, text: str) -> None:
    assert code == 2, stdout + stderr
    assert stdout == ""
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("trm-sync: error: ") and text in stderr, stderr


def test_plan_follows_the_manifest_not_directory_names_or_clocks(run: Path, home: Path) -> None:
    # Segment 0's directory gets a later name (a node whose clock ran ahead) and the newest mtimes,
    # segment 2's the oldest: name order and mtime order are now both the reverse of the manifest's.
    data = manifest(run)
    run_id = data["wandb"]["run_id"]
    first = run / data["segments"][0]["wandb_dir"]
    renamed = first.with_name(f"offline-run-20991231_235959-{run_id}")
    first.rename(renamed)
    with RunManifest(run).update() as m:
        m.segments[0].wandb_dir = f"wandb/{renamed.name}"
    for age, file in enumerate(wandb_files(run)):
        stamp = 2_000_000_000 - 1000 * age
        os.utime(file, (stamp, stamp))
        os.utime(file.parent, (stamp, stamp))
    files = wandb_files(run)
    assert find_segments(run) == [files[1], files[2], files[0]]  # what clock/name order would do
    assert sorted(files, key=lambda f: f.stat().st_mtime) == files[::-1]

    before = tree_digest(run)
    code, out, err = sync(run, "--dry-run", home=home)
    assert code == 0, err
    segments = manifest(run)["segments"]
    assert plan_rows(out) == [(i, s["wandb_dir"], "sync") for i, s in enumerate(segments)]
    for s in segments:
        assert f"steps {s['start_step']}->{s['end_step']} " in out
    assert out.endswith("to sync, in this order: 0, 1, 2\n")
    assert tree_digest(run) == before and not (run / "sync.lock").exists()


def test_synced_marker_skips_a_segment_and_order_gaps_are_refused(run: Path, home: Path) -> None:
    files = wandb_files(run)
    mark_synced(files[0])
    code, out, err = sync(run, "--dry-run", home=home)
    assert code == 0, err
    assert [action for _, _, action in plan_rows(out)] == ["already synced, skip", "sync", "sync"]
    assert "to sync, in this order: 1, 2" in out

    # Segment 2 synced while segment 1 is not: uploading 1 now would land after 2's steps.
    mark_synced(files[2])
    before = tree_digest(run)
    for args in (("--dry-run",), ()):
        assert_refused(*sync(run, *args, home=home), "segment 1 is not synced but the later segment 2")
    assert tree_digest(run) == before

    # Everything synced: nothing to do, and no key is needed to find that out.
    mark_synced(files[1])
    code, out, err = sync(run, home=home)
    assert code == 0 and "nothing left to sync" in out, out + err
    marker = str(files[1].relative_to(run)) + ".synced"
    assert {k: v for k, v in tree_digest(run).items() if k != marker} == before


@pytest.mark.parametrize("key", [None, ""], ids=["unset", "empty"])
def test_real_sync_without_api_key_is_refused_and_changes_nothing(
    run: Path, home: Path, key: str | None
) -> None:
    before = tree_digest(run)
    env = {} if key is None else {"WANDB_API_KEY": key}
    assert_refused(*sync(run, home=home, **env), "no W&B API key configured")
    assert tree_digest(run) == before
    assert not list(run.rglob("*.synced")) and not (run / "sync.lock").exists()


def test_missing_or_corrupt_manifest_is_refused(tmp_path: Path, home: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (("--dry-run",), ()):
        assert_refused(*sync(empty, *args, home=home), "holds no run")
    assert tree_digest(empty) == {}

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "manifest.json").write_text('{"schema_version": 1, "name": ')
    before = tree_digest(corrupt)
    for args in (("--dry-run",), ()):
        assert_refused(*sync(corrupt, *args, home=home), "is corrupt")
    assert tree_digest(corrupt) == before


def test_running_segment_and_missing_file_are_refused_online_has_nothing(run: Path, home: Path) -> None:
    with RunManifest(run).update() as m:
        m.status = "running"
        m.segments[-1].end_reason = m.segments[-1].end_time = m.segments[-1].end_step = None
    before = tree_digest(run)
    for args in (("--dry-run",), ()):
        assert_refused(*sync(run, *args, home=home), "segment 2 of run")
    assert tree_digest(run) == before

    with RunManifest(run).update() as m:
        m.status = "requeued"  # the writer is gone: its segment may be synced
    files = wandb_files(run)
    files[1].unlink()
    assert_refused(*sync(run, "--dry-run", home=home), f"segment 1's W&B file {files[1]} is missing")

    with RunManifest(run).update() as m:
        m.wandb.mode = "online"
    code, out, err = sync(run, home=home)
    assert code == 0 and "logged to W&B online: nothing to sync" in out, out + err


def test_run_without_wandb_has_nothing_to_sync(tmp_path: Path, home: Path) -> None:
    result = cli(
        "submit", "--preset", "regression", "--executor", "debug", "--no-wandb", "--run-dir", "RUN",
        "--steps", "10", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "RUN"
    before = tree_digest(run_dir)
    for args in (("--dry-run",), ()):
        assert_refused(*sync(run_dir, *args, home=home), "W&B disabled (--no-wandb): nothing to sync")
    assert tree_digest(run_dir) == before


def _ctrl_c_as_in_a_terminal() -> None:
    """SIGINT acts as in a terminal's foreground job even when the suite runs as a background job (a
    non-interactive shell's ``cmd &`` starts it with SIGINT ignored, which every child inherits: the sync
    then never saw the Ctrl-C and the test timed out whenever wandb sync kept retrying past 60 s)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


FAKE_KEY = {"WANDB_API_KEY": "x" * 40}  # "configured", but the server (NO_SERVER) does not exist


def test_a_sync_that_did_not_finish_blocks_that_segment_until_checked(run: Path, home: Path) -> None:
    """The real path: ``wandb sync`` starts on segment 0 and cannot reach a server; Ctrl-C stops it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "trm_cluster.sync", str(run)],
        cwd=run.parent,
        env=clean_env(HOME=str(home), **NO_SERVER, **FAKE_KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )
    first = wandb_files(run)[0]
    started = first.with_suffix(".wandb.trm-sync-started")
    deadline = time.monotonic() + 30
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # let wandb sync get going
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert err.splitlines()[-1].startswith("trm-sync: error: interrupted while syncing segment 0"), err
    assert started.exists() and not list(run.rglob("*.synced"))

    for args in (("--dry-run",), ()):
        assert_refused(*sync(run, *args, home=home, **FAKE_KEY), f"delete {started}")
    started.unlink()
    code, out, err = sync(run, "--dry-run", home=home)
    assert code == 0 and out.endswith("to sync, in this order: 0, 1, 2\n"), out + err


def test_a_second_sync_of_the_same_run_is_refused(run: Path, home: Path) -> None:
    with filelock.FileLock(str(run / "sync.lock"), timeout=0):
        before = tree_digest(run)
        assert_refused(*sync(run, home=home, **FAKE_KEY), "another trm-sync holds")
        assert tree_digest(run) == before


def keep_only_header(file: Path) -> None:
    """What a SIGKILL before wandb-core's first flush leaves: the 7-byte ``:W&B`` header of a real file."""
    file.write_bytes(file.read_bytes()[:7])


def test_a_header_only_segment_is_planned_as_skipped(run: Path, home: Path) -> None:
    keep_only_header(wandb_files(run)[1])
    before = tree_digest(run)
    code, out, err = sync(run, "--dry-run", home=home)
    assert code == 0, err
    assert [action for _, _, action in plan_rows(out)] == ["sync", "header only, skip", "sync"]
    assert out.endswith("segment 1: header only, nothing to upload; skipped\nto sync, in this order: 0, 2\n")
    assert tree_digest(run) == before


def test_a_real_sync_passes_over_a_header_only_segment(run: Path, home: Path) -> None:
    """Segment 0 holds only the header: the real sync goes straight to segment 1 (stopped by Ctrl-C there)."""
    files = wandb_files(run)
    keep_only_header(files[0])
    proc = subprocess.Popen(
        [sys.executable, "-m", "trm_cluster.sync", str(run)],
        cwd=run.parent,
        env=clean_env(HOME=str(home), **NO_SERVER, **FAKE_KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )
    started = [f.with_suffix(".wandb.trm-sync-started") for f in files]
    deadline = time.monotonic() + 30
    while not started[1].exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert out.startswith("segment 0: header only, nothing to upload; skipped\n"), out + err
    assert "trm-sync: error: interrupted while syncing segment 1" in err, err
    assert not started[0].exists() and started[1].exists() and not list(run.rglob("*.synced"))
