"""A sweep's record (``sweep.json``): its name, axes and elements, beside the elements' run directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trm_cluster.rundir.atomic import atomic_write_bytes

SWEEP_RECORD = "sweep.json"
"""A sweep folder's record (launch/sweep.py): its elements are listed with the runs beside it."""


def is_sweep(path: Path) -> bool:
    return (path / SWEEP_RECORD).is_file()


def read_record(sweep_dir: Path) -> dict[str, Any] | None:
    """The sweep record, or None when the folder holds none (or an unreadable one)."""
    try:
        record: dict[str, Any] = json.loads((sweep_dir / SWEEP_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record


def write_record(sweep_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_bytes(sweep_dir / SWEEP_RECORD, (json.dumps(record, indent=2) + "\n").encode())
