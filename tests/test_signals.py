"""Deferred signals: the handler records, never acts; forked children ignore the parent's handler."""

from __future__ import annotations

import os
import signal
import time

import pytest

from trm_cluster.signals import StopSignals, ignore_stop_signals


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
