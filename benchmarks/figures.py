"""What every benchmark of run.py reports: figures with a unit and their spread over interleaved
repetitions, ratios taken within one repetition, and the machine and commit they were measured on."""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Figure:
    """One measured quantity: its median over the repetitions, with their min and max."""

    name: str
    value: float
    unit: str
    low: float
    high: float
    repeats: int
    note: str = ""
    target: str = ""
    met: bool | None = None
    """Whether ``target`` is met by the median (None: no target)."""

    def row(self) -> list[str]:
        spread = f"[{_fmt(self.low)}..{_fmt(self.high)}]" if self.repeats > 1 else ""
        verdict = "" if self.met is None else ("met" if self.met else "NOT met")
        return [self.name, f"{_fmt(self.value)} {self.unit}", spread, self.target, verdict, self.note]


def figure(name: str, values: Sequence[float], unit: str, note: str = "", **target: Any) -> Figure:
    """Median [min..max] of ``values``; ``target=("<=", 0.05)`` marks whether the median meets it."""
    if not values:
        raise ValueError(f"no measurement for {name}")
    median = float(statistics.median(values))
    wanted = target.get("target")
    met = None
    text = ""
    if wanted is not None:
        op, limit = wanted
        met = median <= limit if op == "<=" else median >= limit
        text = f"{op} {_fmt(limit)}"
    return Figure(name, median, unit, float(min(values)), float(max(values)), len(values), note, text, met)


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per repetition: each ratio compares two variants measured next to each other."""
    return [a / b for a, b in zip(numerator, denominator, strict=True) if b > 0]


def interleaved(variants: Mapping[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each variant once per repetition, the order rotated (A B C, B C A, ...), so that a change of the
    machine's load falls on every variant alike."""
    names = list(variants)
    results: dict[str, list[float]] = {name: [] for name in names}
    for repetition in range(repeats):
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(variants[name]())
    return results


@dataclass
class Machine:
    host: str = field(default_factory=socket.gethostname)
    cpus: int = field(default_factory=lambda: os.cpu_count() or 0)
    system: str = field(default_factory=platform.platform)
    python: str = field(default_factory=platform.python_version)
    torch_version: str = torch.__version__
    device: str = field(
        default_factory=lambda: torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    )
    torch_threads: int = field(default_factory=torch.get_num_threads)
    load_at_start: tuple[float, ...] = field(default_factory=os.getloadavg)
    load_at_end: tuple[float, ...] = ()


def commit() -> str:
    """The commit measured, with ``+dirty`` when the working tree differs from it (results.json aside)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!benchmarks/results.json"], cwd=REPO, capture_output=True, text=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def table(figures: Sequence[Figure]) -> str:
    header = ["figure", "median", "[min..max]", "target", "", "note"]
    rows = [header] + [f.row() for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def as_json(figures: Sequence[Figure], machine: Machine, settings: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "commit": commit(),
        "machine": asdict(machine),
        "settings": dict(settings),
        "figures": {f.name: asdict(f) for f in figures},
    }


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"
