"""A folder of runs at a glance: progress, training speed, time left, and how often each was interrupted.

Why: a researcher with a dozen preemptible runs wants one table, not a dozen ``status`` calls. Read-only
(manifests are replaced atomically, so no lock is taken) and a broken run never hides the others.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from trm_cluster.ops.goodput import goodput
from trm_cluster.ops.stall import liveness, training_speed
from trm_cluster.rundir.manifest import MANIFEST_NAME, ManifestError, RunManifest
from trm_cluster.rundir.sweep_record import SWEEP_RECORD, read_record


@dataclass(frozen=True)
class RunSummary:
    """One run's line in the overview; ``error`` is set (and the rest empty) when it cannot be read."""

    run_dir: str
    name: str = ""
    status: str = ""
    step: int = 0
    total_steps: int = 0
    segments: int = 0
    timeouts: int = 0
    preemptions: int = 0
    killed: int = 0
    """Segments that ended without closing (SIGKILL, OOM, node failure) or failed."""
    steps_per_s: float | None = None
    """Training speed over the segments (queue time excluded)."""
    eta_s: float | None = None
    """Training time left at that speed (queue waits come on top)."""
    goodput: float | None = None
    """Training time over wall-clock time since creation (goodput.py)."""
    stalled: bool = False
    """The open segment has not reached a step boundary for far longer than a step takes (stall.py)."""
    error: str | None = None

    @property
    def progress(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0


def find_runs(folder: Path) -> list[Path]:
    """Run directories directly under ``folder`` (those holding a manifest), and those of each sweep
    folder under it (``SWEEP/ELEMENT``), by name."""
    runs = [p.parent for p in folder.glob(f"*/{MANIFEST_NAME}")]
    runs += [
        p.parent for p in folder.glob(f"*/*/{MANIFEST_NAME}") if (p.parent.parent / SWEEP_RECORD).is_file()
    ]
    return sorted(runs)


def summarize(run_dir: Path) -> RunSummary:
    try:
        data = RunManifest(run_dir).read()
    except ManifestError as error:
        return RunSummary(run_dir=str(run_dir), error=str(error))
    speed = training_speed(data)
    remaining = data.total_steps - data.step
    return RunSummary(
        run_dir=str(run_dir),
        name=data.name,
        status=data.status,
        step=data.step,
        total_steps=data.total_steps,
        segments=len(data.segments),
        timeouts=data.requeues.get("timeout", 0),
        preemptions=data.requeues.get("preempted", 0),
        killed=sum(s.end_reason in ("killed", "failed", "hung") for s in data.segments),
        steps_per_s=speed,
        eta_s=remaining / speed if speed and data.status != "completed" else None,
        goodput=goodput(data).goodput,
        stalled=liveness(run_dir, data).stalled,
    )


def overview(folder: Path) -> list[RunSummary]:
    return [summarize(run_dir) for run_dir in find_runs(folder)]


def as_json(summaries: list[RunSummary]) -> list[dict[str, object]]:
    return [
        {"run_dir": s.run_dir, "error": s.error}
        if s.error
        else {**asdict(s), "progress": round(s.progress, 4)}
        for s in summaries
    ]


def label(run_dir: str) -> str:
    """A run's name in the table: a sweep's element under another folder is ``SWEEP/ELEMENT``."""
    path = Path(run_dir)
    return f"{path.parent.name}/{path.name}" if (path.parent / SWEEP_RECORD).is_file() else path.name


def render(summaries: list[RunSummary], folder: Path | None = None) -> str:
    """``folder``: the folder listed (its own elements, when it is a sweep, keep their bare names)."""
    inside = folder.resolve() if folder is not None else None

    def name_of(s: RunSummary) -> str:
        return Path(s.run_dir).name if Path(s.run_dir).resolve().parent == inside else label(s.run_dir)

    header = (
        "RUN",
        "STATUS",
        "STEP",
        "DONE",
        "SEGS",
        "TIMEOUT",
        "PREEMPT",
        "KILLED",
        "STEPS/S",
        "ETA",
        "GOODPUT",
    )
    rows: list[tuple[str, ...]] = [header]
    for s in summaries:
        name = name_of(s)
        if s.error:
            rows.append((name, "unreadable", *[""] * (len(header) - 2)))
            continue
        rows.append(
            (
                name,
                f"{s.status} STALLED" if s.stalled else s.status,
                f"{s.step}/{s.total_steps}",
                f"{100 * s.progress:.0f}%",
                str(s.segments),
                str(s.timeouts),
                str(s.preemptions),
                str(s.killed),
                f"{s.steps_per_s:.2f}" if s.steps_per_s else "-",
                _clock(s.eta_s) if s.eta_s is not None else "-",
                f"{100 * s.goodput:.0f}%" if s.goodput is not None else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines += [f"{name_of(s)}: {s.error}" for s in summaries if s.error]
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def sweep_header(sweep_dir: Path) -> str | None:
    """``status SWEEP_DIR``'s first line: the sweep, its keys and its array job."""
    record = read_record(sweep_dir)
    if record is None:
        return None
    axes = " x ".join(f"{a['key']}={','.join(a['values'])}" for a in record.get("axes", []))
    array = record.get("array_job_id")
    where = f"{record.get('executor')} array job {array}" if array else f"{record.get('executor')} executor"
    return f"sweep {record.get('name')}: {len(record.get('elements', []))} elements of {axes}; {where}"
