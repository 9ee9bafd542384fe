"""Preemption rehearsal (``--preemptions N``): real signals, sent by the job to itself at chosen steps."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Sequence

from trm_cluster.core.signals import preempt_signal


class PreemptionInjector:
    """Preemption rehearsal: send ourselves the real preemption signal once the run passes a given step.

    A thread sends it, so it lands asynchronously, mid-step, as a scheduler's signal would. One per
    process: it fires at the first rehearsal step, or right after the resume step if an earlier signal
    overshot it, and the training loop never gets more than one step past that step without it.
    """

    def __init__(self, steps: Sequence[int], start_step: int) -> None:
        self._target = max(steps[0], start_step + 1) if steps else None
        self._reached = threading.Event()
        self._done = threading.Event()
        self._sent = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def fired(self) -> bool:
        return self._sent.is_set()

    def start(self) -> None:
        if self._target is not None:
            self._thread = threading.Thread(target=self._run, name="preemption-injector", daemon=True)
            self._thread.start()

    def reached(self, step: int) -> None:
        if self._target is None or step < self._target:
            return
        self._reached.set()
        if step > self._target:
            self._sent.wait(timeout=10)  # bound the overshoot to one step, however busy the machine

    def stop(self) -> None:
        self._done.set()
        self._reached.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        self._reached.wait()
        if self._done.is_set() or self._target is None:
            return
        time.sleep(random.Random(self._target).uniform(0.0, 0.005))
        os.kill(os.getpid(), preempt_signal())
        self._sent.set()
