"""``status RUN_DIR --plot``: the picture of a real 3-segment run (preempted twice, W&B offline), checked
through the figure's own artists, not only the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support import cli, manifest, tree_digest

from trm_cluster import status
from trm_cluster.ops import plot
from trm_cluster.ops.goodput import goodput
from trm_cluster.rundir.manifest import RunManifest


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    done = cli(
        "submit", "--preset", "regression", "--executor", "debug", "--wandb-mode", "offline",
        "--run-dir", str(runs / "three"), "--steps", "30", "--checkpoint-every", "10", "--preemptions", "2",
        cwd=runs,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # progress lines carry the speed and the time left
    progress = [line for line in done.stdout.splitlines() if line.startswith("[trm_cluster] step 25/30 ")]
    assert len(progress) == 1 and " steps/s eta " in progress[0], done.stdout
    assert [s["end_reason"] for s in manifest(runs / "three")["segments"]] == [
        "preempted",
        "preempted",
        "completed",
    ]
    return runs / "three"


def test_the_picture_draws_each_segment_its_ends_the_gaps_and_the_loss(run_dir: Path) -> None:
    data = RunManifest(run_dir).read()
    figure = plot.run_figure(run_dir)
    steps_axis, loss_axis = figure.axes
    lines = {line.get_label(): line for line in steps_axis.get_lines()}
    segments = [line for line in steps_axis.get_lines() if line.get_label().startswith("segment ")]
    assert [line.get_label() for line in segments] == ["segment 0", "segment 1", "segment 2"]
    assert len({line.get_color() for line in segments}) == 3  # one colour per segment
    # each segment's line ends where the manifest says it ended
    for line, segment in zip(segments, data.segments, strict=True):
        assert line.get_ydata()[-1] == segment.end_step and line.get_ydata()[0] == segment.start_step
    markers = [line for line in steps_axis.get_lines() if line.get_label() == "preempted"]
    assert len(markers) == 2 and all(m.get_marker() == "v" for m in markers)
    assert [m.get_ydata()[0] for m in markers] == [s.end_step for s in data.segments[:2]]
    assert "starting up" in lines and not any(
        line.get_label() in ("killed", "timeout") for line in lines.values()
    )
    gaps = [p for p in steps_axis.patches if p.get_label() == "between segments"]
    assert len(gaps) == 2  # between 0 and 1, between 1 and 2 (however short: the debug executor's are ms)
    assert [g.get_x() for g in gaps] == pytest.approx([m.get_xdata()[0] for m in markers], abs=1e-3)
    # the loss, from the W&B offline files: every logged row of the 30 steps, one line per segment
    loss_points = sorted(y for line in loss_axis.get_lines() for y in line.get_ydata())
    assert len(loss_points) == 30 // 5 and all(v > 0 for v in loss_points)
    share = goodput(data).goodput
    assert share is not None and f"goodput {100 * share:.0f}%" in figure.get_suptitle()


def test_status_plot_writes_the_file_and_nothing_else(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The status command's own main, in this process (a subprocess would import torch and matplotlib
    again: seconds on a loaded machine)."""
    before = tree_digest(run_dir)
    picture = tmp_path / "life.png"
    assert status.main([str(run_dir), "--json", "--plot", str(picture)]) == 0
    out, err = capsys.readouterr()
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert err.strip() == f"picture: {picture}"
    assert tree_digest(run_dir) == before

    # the goodput a real run records: every segment timed its startup and its saves
    shown = json.loads(out)  # --json: stdout stays pure JSON with a picture
    assert all(
        s["timings"]["first_step_time"] and s["timings"]["save_s"] is not None for s in shown["segments"]
    )
    g = shown["goodput"]
    parts = g["training_s"] + g["queue_s"] + g["startup_s"] + g["saving_s"] + g["lost_s"] + g["unaccounted_s"]
    assert parts == pytest.approx(g["wall_s"], abs=0.01) and 0 < g["goodput"] < 1


def test_a_folder_picture_has_one_line_per_run(run_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "runs"
    shutil.copytree(run_dir, folder / "a")
    shutil.copytree(run_dir, folder / "b")
    (folder / "broken").mkdir()
    (folder / "broken" / "manifest.json").write_text("{")
    figure = plot.folder_figure([folder / "a", folder / "b"])
    (axis,) = figure.axes
    assert len(axis.get_lines()) == 2
    # the broken run is reported; the picture holds the two readable ones
    assert status.main([str(folder), "--plot", str(tmp_path / "all.png")]) == 1
    assert (tmp_path / "all.png").read_bytes()[:4] == b"\x89PNG"


def test_a_picture_in_an_unknown_format_is_refused_in_one_line(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert status.main([str(run_dir), "--plot", str(tmp_path / "life.bmpx")]) == 2
    out, err = capsys.readouterr()
    assert (
        out == "" and err.strip().endswith("use a .png, .svg or .pdf file") and not list(tmp_path.iterdir())
    )
