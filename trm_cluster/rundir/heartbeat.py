"""A training process's heartbeat: its step and save time, a few times a minute, in ``heartbeat.json``.

Why: a SIGKILLed process closes nothing. The next process reads the heartbeat to learn how far the dead
one got past its last durable checkpoint (the steps it must recompute) and how long it spent saving, so
``status`` can say what the kill cost; and a process of another host reads it to tell a live holder of
the run's lease from a dead one (lease.py). Not a durable record (no fsync): a lost heartbeat only makes
the estimate conservative.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trm_cluster.core.job_context import pid_exists

HEARTBEAT_NAME = "heartbeat.json"
INTERVAL_S = 5.0
"""At most one write per interval: a few hundred bytes, far below a step's cost."""


@dataclass(frozen=True)
class Beat:
    segment: int
    step: int
    time: float
    save_s: float


class Heartbeat:
    """Writes this segment's beats (rank 0 only), at most every :data:`INTERVAL_S` seconds."""

    def __init__(self, run_dir: Path, segment: int, interval_s: float = INTERVAL_S) -> None:
        self.path = Path(run_dir) / HEARTBEAT_NAME
        self.segment = segment
        self.interval_s = interval_s
        self._last = -float("inf")

    def due(self) -> bool:
        """Whether the interval since the last beat has passed."""
        return time.time() - self._last >= self.interval_s

    def beat(self, step: int, save_s: float) -> None:
        if self._last == -float("inf"):  # this segment's first beat: a killed writer's leftovers go
            remove_stale_temp_files(self.path.parent)
        self._last = now = time.time()
        payload = {"segment": self.segment, "step": step, "time": now, "save_s": save_s}
        tmp = self.path.with_name(f"{TEMP_PREFIX}{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(payload))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a heartbeat is an estimate; training never stops for it


TEMP_PREFIX = f".{HEARTBEAT_NAME}."


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Remove ``.heartbeat.json.<pid>.tmp`` files of processes that are gone (a SIGKILL between the
    write and the rename leaves one per kill); return them. Only the beating rank 0 calls this: its
    peers on other nodes would not see the writer's pid. A pid alive on this host is kept, since
    another host's leftover may share a live local number (harmless: a few hundred bytes)."""
    removed = []
    for tmp in Path(run_dir).glob(f"{TEMP_PREFIX}*.tmp"):
        pid = tmp.name[len(TEMP_PREFIX) : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_exists(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def read_beat(run_dir: Path, segment: int) -> Beat | None:
    """The last beat of ``segment``, if the heartbeat file is that segment's and readable."""
    try:
        raw: dict[str, Any] = json.loads((Path(run_dir) / HEARTBEAT_NAME).read_text())
        beat = Beat(int(raw["segment"]), int(raw["step"]), float(raw["time"]), float(raw["save_s"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return beat if beat.segment == segment else None
