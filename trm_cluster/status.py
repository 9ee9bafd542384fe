"""``python -m trm_cluster.status RUN_DIR``: where a run stands, from its manifest and checkpoints."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from trm_cluster.core.pipes import quiet_on_broken_pipe
from trm_cluster.core.process_exit import skip_final_collections
from trm_cluster.ops import overview
from trm_cluster.ops.report import render, run_status
from trm_cluster.rundir.manifest import MANIFEST_NAME, ManifestError


@dataclass
class StatusArgs:
    """Show a run's progress, segments and checkpoints; given a folder of runs, one line per run."""

    run_dir: tyro.conf.Positional[Path]
    """A run directory, or a folder whose subdirectories are runs (e.g. runs/)."""
    json: bool = False
    """Print machine-readable JSON instead of the summary."""
    plot: Path | None = None
    """Also draw the run's life (steps vs wall-clock per segment, queue gaps, ends, loss) into this
    image file (.png, .svg, .pdf); for a folder of runs, one line per run."""


@quiet_on_broken_pipe
def main(argv: list[str] | None = None) -> int:
    skip_final_collections()
    args = tyro.cli(StatusArgs, args=argv, prog="python -m trm_cluster.status")
    folder = not (args.run_dir / MANIFEST_NAME).exists() and bool(overview.find_runs(args.run_dir))
    if args.plot is not None and args.plot.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        print(f"trm-status: error: --plot {args.plot}: use a .png, .svg or .pdf file", file=sys.stderr)
        return 2
    if folder:
        code = _folder_status(args.run_dir, as_json=args.json)
        if args.plot is not None:
            _draw(args.plot, args.run_dir, folder=True)
        return code
    try:
        status = run_status(args.run_dir)
    except ManifestError as error:
        print(f"trm-status: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2) if args.json else render(status))
    if args.plot is not None:
        _draw(args.plot, args.run_dir, folder=False)
    return 0


PLOT_FORMATS = ("png", "svg", "pdf")


def _draw(path: Path, run_dir: Path, folder: bool) -> None:
    from trm_cluster.ops import plot  # matplotlib only when a picture is asked for

    runs = [d for d in overview.find_runs(run_dir) if not overview.summarize(d).error] if folder else []
    plot.save(plot.folder_figure(runs) if folder else plot.run_figure(run_dir), path)
    print(f"picture: {path}", file=sys.stderr)  # stderr: --json keeps stdout pure JSON


def _folder_status(folder: Path, as_json: bool) -> int:
    summaries = overview.overview(folder)
    title = None if as_json else overview.sweep_header(folder)  # a sweep folder: its keys and array job first
    if title:
        print(title)
    print(
        json.dumps(overview.as_json(summaries), indent=2) if as_json else overview.render(summaries, folder)
    )
    broken = [s for s in summaries if s.error]
    if broken:
        print(f"trm-status: error: {len(broken)} of {len(summaries)} runs unreadable", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
