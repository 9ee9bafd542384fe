"""The ``wandb-core`` processes that write a run's ``.wandb`` files: found through ``/proc``, waited
for, killed. Why here: a dead process's writer can still be flushing, and the next process must not
read the watermark before it is done."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterable


def live_writers(pids: Iterable[int]) -> list[int]:
    """Live ``wandb-core`` processes started for one of ``pids`` (wandb passes ``--pid <parent>``)."""
    wanted, found = set(pids), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if not argv or not os.path.basename(argv[0]).startswith(b"wandb-core"):
            continue
        for flag, value in itertools.pairwise(argv):
            if flag == b"--pid" and value.isdigit() and int(value) in wanted:
                found.append(int(entry.name))
    return found


def wait_for_writers(pids: Iterable[int], timeout_s: float = 30.0) -> list[int]:
    """Wait until no ``wandb-core`` of these (dead) processes is left on this host; return any that stay.

    Why: wandb-core runs in its own session, outlives a SIGKILLed parent for a moment and flushes its
    buffer on the way out, so a ``.wandb`` file still grows after its process died. Reading the watermark
    before that ends would let the next process log those steps a second time.
    """
    wanted = set(pids)
    if not wanted or not os.path.isdir("/proc"):
        return []
    deadline = time.monotonic() + timeout_s
    while (left := live_writers(wanted)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def kill_writers(pids: Iterable[int]) -> list[int]:
    """SIGKILL the ``wandb-core`` of these processes (a hung one would hold up exit and requeue)."""
    killed = []
    for core in live_writers(set(pids)):
        try:
            os.kill(core, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.append(core)
    return killed
