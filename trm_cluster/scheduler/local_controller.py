"""The local executor's controller process: submitit's ``Controller``, with what a Slurm job step has too.

submitit's entry point (``python -m submitit.local._local FOLDER``) differs from Slurm in two ways that
strand a run, so :class:`~trm_cluster.scheduler.executors.LocalExecutor` starts this file instead:

- it reruns a requeued task (exit code 144) at most 6 times, where Slurm requeues as often as asked
  (the manifest's requeue budget bounds timeouts; preemptions are not bounded, as on Slurm);
- it waits for every task, however long: a rank frozen by SIGSTOP, or blocked where no timeout reaches,
  keeps the job alive forever after its peers gave up on it. Here, as with ``srun --kill-on-bad-exit``,
  a task that fails (any exit code but 0 and 144) ends the others, after a grace period in which a
  sibling may still record the failure in the manifest (``TRM_CLUSTER_KILL_ON_BAD_EXIT_S``).

It also gives the tasks of each run a master port (``MASTER_PORT``) that was free when they started and
lies below the kernel's ephemeral range. submitit derives the port from the job id anywhere in 20000-60000,
which overlaps that range (32768-60999 on Linux): an outgoing connection on the same machine could hold it,
and rank 0 then failed with EADDRINUSE (seen in CI). A port the user set is kept.

Everything else is submitit's Controller: the tasks, their logs, USR2 before the time limit, SIGINT then
SIGKILL at it, the job id (this process's pid). Run by its path with ``python -P`` (so that the package's
own folder does not shadow other modules), never as ``-m trm_cluster...``: importing the package would
load torch into a process that lives as long as the job; so this file imports only submitit and the
standard library.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE, Controller, LocalJobEnvironment

KILL_ON_BAD_EXIT_ENV = "TRM_CLUSTER_KILL_ON_BAD_EXIT_S"
DEFAULT_KILL_ON_BAD_EXIT_S = 30.0
"""Long enough for a rank that saw its peer die to close the segment as failed; a frozen rank gains
nothing from a longer wait."""


def kill_on_bad_exit_s() -> float:
    try:
        value = float(os.environ.get(KILL_ON_BAD_EXIT_ENV, DEFAULT_KILL_ON_BAD_EXIT_S))
    except ValueError:
        return DEFAULT_KILL_ON_BAD_EXIT_S
    return value if value >= 0 else DEFAULT_KILL_ON_BAD_EXIT_S


LOWEST_MASTER_PORT = 20000
"""submitit's own lower bound for a master port."""
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_ports() -> range:
    """The ports the kernel hands to outgoing connections (Linux's default when it cannot be read)."""
    try:
        low, high = (int(word) for word in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def bindable(port: int) -> bool:
    """Whether a listener could take ``port`` now, on every interface (as torch's TCPStore does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def free_master_port(candidates: Sequence[int] | None = None, rng: random.Random | None = None) -> int:
    """A port from ``candidates`` (default: 20000 up to the ephemeral range) that binds now, tried in a
    random order; the kernel's choice of a free port when none does."""
    if candidates is None:
        candidates = range(LOWEST_MASTER_PORT, max(ephemeral_ports().start, LOWEST_MASTER_PORT + 1))
    order = list(candidates)
    (rng or random.Random()).shuffle(order)
    for port in order[:200]:
        if bindable(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def failed(code: int | None) -> bool:
    """A task that ended neither cleanly nor asking for a requeue."""
    return code is not None and code not in (0, LOCAL_REQUEUE_RETURN_CODE)


class JobStepController(Controller):
    """submitit's Controller whose tasks get a free master port, and whose wait ends the remaining tasks
    once one of them failed."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.user_master_port = "MASTER_PORT" in os.environ

    def start_tasks(self) -> None:
        if self.ntasks > 1 and not self.user_master_port:  # chosen again for each rerun of the tasks
            os.environ["MASTER_PORT"] = str(free_master_port())
        super().start_tasks()

    def wait(self, freq: int = 24) -> Sequence[int | None]:
        grace = kill_on_bad_exit_s()
        started = time.monotonic()
        usr_signal_at = self.timeout_s - self.signal_delay_s
        signalled = False
        first_failure: float | None = None
        while True:
            codes = [task.poll() for task in self.tasks]
            now = time.monotonic()
            if all(code is not None for code in codes) or now - started >= self.timeout_s:
                return codes
            if not signalled and now - started >= usr_signal_at:
                self._forward_signal(LocalJobEnvironment._usr_sig())
                signalled = True
            if first_failure is None and any(failed(code) for code in codes):
                first_failure = now
            if first_failure is not None and now - first_failure >= grace:
                print(
                    f"trm_cluster: a task failed {grace:.0f} s ago; ending the {codes.count(None)} left "
                    f"(as srun --kill-on-bad-exit)",
                    file=sys.stderr,
                    flush=True,
                )
                tasks = list(self.tasks)
                self.kill_tasks()  # SIGINT, then SIGKILL: also ends a frozen (SIGSTOPped) task
                for task in tasks:  # reaped before this process ends: nothing of the job outlives it
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        task.wait(timeout=10)
                return codes
            time.sleep(1.0 / freq)


if __name__ == "__main__":
    JobStepController(Path(sys.argv[1])).run(max_retry=sys.maxsize)
