"""trm_cluster.wandb.files against files written by the real wandb (offline, one process per segment).

Why real processes: each requeued job is a new process writing its own ``run-<id>.wandb``; only real
files show what wandb 0.31 puts on disk (record layout, resume flags, what survives a SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from trm_cluster.wandb.files import WandbSegment, find_segments, iter_records, max_logged_step, read_segment
from trm_cluster.wandb.writers import live_writers, wait_for_writers

RUN_ID = "trmseg01"


def _env(tmp: Path) -> dict[str, str]:
    """Offline, silent, everything under tmp; no inherited WANDB_* (an empty one crashes wandb.init)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(tmp / "job"),
        WANDB_CONFIG_DIR=str(tmp / "wandb-config"),
        WANDB_CACHE_DIR=str(tmp / "wandb-cache"),
        WANDB_DATA_DIR=str(tmp / "wandb-data"),
    )
    return env


def _script(body: str, tmp: Path) -> list[str]:
    """A ``python -c`` command that inits run RUN_ID in tmp/job, then runs body."""
    head = f"""
        import sys, time, wandb
        run = wandb.init(id={RUN_ID!r}, resume="allow", dir={str(tmp / "job")!r}, project="p",
                         config={{"lr": 0.1, "model": {{"depth": 2}}}})
        print("starting_step", run.starting_step, flush=True)
        """
    return [sys.executable, "-c", textwrap.dedent(head) + textwrap.dedent(body)]


def _run_segment(body: str, tmp: Path) -> None:
    # cwd is tmp, not tmp/job: `python -c` puts cwd on sys.path, and a `wandb/` folder there would
    # shadow the wandb package.
    (tmp / "job").mkdir(exist_ok=True)
    proc = subprocess.run(
        _script(body, tmp), cwd=tmp, env=_env(tmp), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "starting_step 0" in proc.stdout  # offline there is no server to know the next step


def _row(s: int) -> dict[str, object]:
    return {"loss": 1.0 / (s + 1), "acc": s * 0.1, "tag": f"s{s}", "hist": [s, s + 1]}


BIG = "y" * 70_000  # one record over two block boundaries: FIRST, MIDDLE, LAST chunks


@pytest.fixture(scope="module")
def two_segments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wandb_two")
    _run_segment(
        """
        for s in range(10):
            run.log({"loss": 1.0 / (s + 1), "acc": s * 0.1, "tag": f"s{s}", "hist": [s, s + 1]}, step=s)
        run.mark_preempting()
        run.finish(exit_code=1)
        """,
        tmp,
    )
    _run_segment(
        f"""
        for s in range(10, 20):
            row = {{"loss": 1.0 / (s + 1), "acc": s * 0.1, "tag": f"s{{s}}", "hist": [s, s + 1]}}
            if s == 15:
                row["blob"] = {BIG!r}
            run.log(row, step=s)
        run.config.update({{"curriculum_modified": True}}, allow_val_change=True)
        run.finish(exit_code=0)
        """,
        tmp,
    )
    return tmp / "job"


def test_two_segments_form_one_run(two_segments: Path) -> None:
    files = find_segments(two_segments)
    assert files == find_segments(two_segments / "wandb")
    assert len(files) == 2
    seg1, seg2 = (read_segment(f) for f in files)

    assert seg1.run_id == seg2.run_id == RUN_ID
    assert seg1.project == seg2.project == "p"
    assert seg1.steps == list(range(10)) and seg2.steps == list(range(10, 20))
    all_steps = seg1.steps + seg2.steps
    assert all_steps == list(range(20)) and len(set(all_steps)) == 20
    assert max_logged_step(files) == 19
    assert max_logged_step(files[:1]) == 9

    for row in seg1.history + seg2.history:
        s = row["_step"]
        assert isinstance(s, int)
        assert {k: row[k] for k in _row(s)} == _row(s)
    assert next(r for r in seg2.history if r["_step"] == 15)["blob"] == BIG

    assert seg1.preempting and seg1.exit_code == 1
    assert not seg2.preempting and seg2.exit_code == 0
    assert seg1.config["lr"] == 0.1 and seg1.config["model"] == {"depth": 2}
    assert "curriculum_modified" not in seg1.config
    assert seg2.config["curriculum_modified"] is True and seg2.config["lr"] == 0.1
    assert seg1.summary["_step"] == 9 and seg2.summary["tag"] == "s19"
    # Offline, resume="allow" is recorded as requested; only a server could say the run existed.
    assert seg1.resume and seg2.resume and not seg1.resumed and not seg2.resumed
    assert seg1.starting_step == seg2.starting_step == 0


def _records(path: Path) -> list[bytes]:
    return [r.SerializeToString() for r in iter_records(path)]


def test_truncated_or_corrupt_tail_yields_prefix(two_segments: Path, tmp_path: Path) -> None:
    src = find_segments(two_segments)[1]  # the one with a 3-chunk record
    data = src.read_bytes()
    full = _records(src)
    assert len(data) > 2 * 32768
    cut_file = tmp_path / "cut.wandb"
    cuts = {*range(0, len(data), 211), *(b + d for b in (32768, 65536) for d in range(-9, 9))}
    for cut in sorted(c for c in cuts if 0 <= c <= len(data)):
        cut_file.write_bytes(data[:cut])
        got = _records(cut_file)
        assert got == full[: len(got)], cut
    cut_file.write_bytes(data[: len(data) // 2])
    half = read_segment(cut_file)
    assert half.run_id == RUN_ID and half.steps == list(range(10, 10 + len(half.steps)))
    assert half.exit_code is None

    bad = bytearray(data)
    bad[len(data) // 2] ^= 0xFF  # a flipped byte: bad crc, reading stops before that record
    cut_file.write_bytes(bytes(bad))
    got = _records(cut_file)
    assert 0 < len(got) < len(full) and got == full[: len(got)]


def test_not_a_wandb_file_raises(tmp_path: Path) -> None:
    other = tmp_path / "run-x.wandb"
    other.write_bytes(b"PK\x03\x04 this is a zip, not a transaction log")
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        list(iter_records(other))
    empty = tmp_path / "empty.wandb"
    empty.write_bytes(b"")  # a writer killed before the header: nothing to read, not an error
    assert list(iter_records(empty)) == []
    assert max_logged_step([empty]) is None


def test_sigkilled_segment_reads_a_prefix(tmp_path: Path) -> None:
    """A SIGKILL leaves whatever wandb-core flushed: a full buffer (or the 15 s timer), cut anywhere.

    Big rows fill wandb-core's write buffer, so part of them reaches the disk early; the process says so
    once the file holds some, keeps logging, and is killed mid-stream, so the file may end in a torn
    record and holds fewer rows than were logged.
    """
    (tmp_path / "job").mkdir()
    cmd = _script(
        """
        import os
        for s in range(5_000):
            run.log({"v": s, "pad": "z" * 20_000}, step=s)
            if s == 59:
                deadline = time.monotonic() + 30
                while os.path.getsize(run.settings.sync_file) < 100_000 and time.monotonic() < deadline:
                    time.sleep(0.05)
                print("logged", flush=True)
        time.sleep(120)
        """,
        tmp_path,
    )
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.stdout.readline().strip() not in ("logged", ""):
            pass
        assert live_writers([proc.pid]), "the live process's wandb-core is not found"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # wandb-core outlives its killed parent for a moment and flushes on the way out: wait it out, as a
    # resuming process does, and the file no longer changes
    assert wait_for_writers([proc.pid]) == []
    (seg_file,) = find_segments(tmp_path / "job")
    size = seg_file.stat().st_size
    time.sleep(1.0)
    assert seg_file.stat().st_size == size
    seg: WandbSegment = read_segment(seg_file)
    assert seg.run_id == RUN_ID and seg.exit_code is None and not seg.preempting
    assert 0 < len(seg.steps) < 5_000 and seg.steps == list(range(len(seg.steps)))
    assert max_logged_step([seg_file]) == seg.steps[-1]
