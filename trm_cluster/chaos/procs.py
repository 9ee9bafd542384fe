"""Processes as the chaos tool sees them from the outside: through ``/proc``, never through the run's files.

A pid alone does not name a process (pids are reused), so a process is a pid plus its start time in
clock ticks (field 22 of ``/proc/PID/stat``).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    started: int
    """Start time in clock ticks since boot: tells this process from a later one with the same pid."""


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def identify(pid: int) -> Proc | None:
    fields = _stat(pid)
    return None if fields is None else Proc(pid, int(fields[19]))


def alive(proc: Proc) -> bool:
    """The same process still exists and is neither a zombie nor dead."""
    fields = _stat(proc.pid)
    return fields is not None and fields[0] not in ("Z", "X") and int(fields[19]) == proc.started


def children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return sorted(found)


def tree(pid: int) -> list[Proc]:
    """``pid`` and every live descendant (by parent pid, taken now)."""
    found: list[Proc] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        proc = identify(current)
        if proc is not None:
            found.append(proc)
        pending.extend(children(current))
    return found


def send(proc: Proc, signum: int) -> bool:
    """Signal the process if it is still the same one; whether the signal was sent."""
    if not alive(proc):
        return False
    try:
        os.kill(proc.pid, signum)
    except ProcessLookupError:
        return False
    return True


def kill_all(procs: list[Proc]) -> None:
    for proc in procs:
        send(proc, signal.SIGKILL)


def reaped(pid: int) -> bool:
    """Whether our child ``pid`` has ended (reaping it); a pid that is not our child: whether it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere (subprocess's own cleanup), or never ours
        fields = _stat(pid)
        return fields is None or fields[0] in ("Z", "X")
    return done == pid


def mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (e.g. a run directory)."""
    wanted, found = text.encode(), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        fields = _stat(int(entry.name))
        if wanted in cmdline and fields is not None and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found
