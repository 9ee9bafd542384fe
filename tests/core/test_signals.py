"""Deferred signals: the handler records, never acts; forked children ignore the parent's handler."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trm_cluster.core.signals import StopSignals, ignore_stop_signals


def test_records_the_first_request_and_counts_repeats() -> None:
    signals = StopSignals()
    signals.install()
    try:
        assert signals.request is None
        before = time.time()
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.01)
        assert signals.request is not None and signals.request.name == "SIGUSR2"
        assert (
            before <= signals.request.received_at <= time.time()
        )  # when it came: the stop's reason needs it
        assert signals.repeats == 2
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL


def test_restore_hands_back_the_previous_handlers() -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        signals = StopSignals()
        signals.install()
        assert callable(signals.previous_handler(signal.SIGUSR2))
        signals.restore()
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.01)
        assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.parametrize("worker_init", [False, True])
def test_a_forked_child_neither_dies_nor_acts_on_the_signal(worker_init: bool) -> None:
    signals = StopSignals()
    signals.install()
    try:
        pid = os.fork()
        if pid == 0:  # child: like a fork-started DataLoader worker
            if worker_init:
                ignore_stop_signals()
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.05)
            os._exit(3 if signals.request is not None else 0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert signals.request is None  # the parent was not asked to stop
    finally:
        signals.restore()


STARTING_JOB = """
import os, signal
import trm_cluster  # what unpickling the job imports first, before submitit installs its handlers
os.kill(os.getpid(), signal.SIGUSR2)  # a preemption while the job's modules still import
os.kill(os.getpid(), signal.SIGTERM)
from trm_cluster.core.signals import StopSignals
stops = StopSignals()
stops.install()  # the loop's own handlers: the early request is now the loop's
print(stops.request.name if stops.request else None)
"""


def test_a_stop_signal_while_a_job_starts_is_kept_for_its_first_step_boundary(tmp_path: Path) -> None:
    """In a submitit job (``SUBMITIT_FOLDER`` set) the package defers USR2/TERM from its import on, so a
    signal before submitit's handlers exist neither kills the task unrequeued nor is lost; outside a job
    the package leaves the default action alone (here: the process dies of the signal)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUBMITIT_")}
    job = subprocess.run([sys.executable, "-c", STARTING_JOB], env={**env, "SUBMITIT_FOLDER": str(tmp_path)},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (job.returncode, job.stdout.strip()) == (0, "SIGUSR2"), job.stderr
    plain = subprocess.run([sys.executable, "-c", STARTING_JOB], env=env, capture_output=True, timeout=120)
    assert plain.returncode == -signal.SIGUSR2


LEAKED_WORKERS = """
import itertools, torch
from torchdata.stateful_dataloader import StatefulDataLoader
from trm_cluster.core.signals import StopSignals
from trm_cluster.state.registered import RegisteredState

class Endless(torch.utils.data.IterableDataset):
    def __iter__(self):
        return (torch.zeros(1) for _ in itertools.count())

StopSignals().install()
loader = StatefulDataLoader(Endless(), batch_size=2, num_workers=4)
RegisteredState({"data": loader})  # its workers ignore SIGTERM
batches = iter(loader)  # still alive at exit: multiprocessing would SIGTERM its workers, then join them
next(batches)
"""


def test_workers_that_ignore_sigterm_do_not_hold_the_exit() -> None:
    """At exit, the workers a live iterator still holds are killed, all of them: torch's SIGCHLD handler,
    raising on the first one's death, once left the others to a join that never returned."""
    runs = [subprocess.Popen([sys.executable, "-c", LEAKED_WORKERS], stderr=subprocess.PIPE, text=True)
            for _ in range(3)]  # fmt: skip
    for run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0 and "killed by signal" not in err, err
