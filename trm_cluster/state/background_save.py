"""Periodic checkpoints written in the background, so training does not wait for the disk.

At the step boundary the state is copied off the training path (:func:`snapshot_copy`: CPU tensors
cloned; CUDA tensors copied into pinned memory on a side stream); one writer thread then hashes,
writes, fsyncs and publishes it (snapshot.py's same write path as a synchronous save) while the next
steps run. The manifest names a checkpoint only once it is durable, so a SIGKILL during the write
loses that checkpoint and nothing else.

At most one save is in flight. A new request while one is in flight **waits** for it (never skips:
which checkpoints exist stays the same as with synchronous saves); the waits are counted in
:class:`SaveStats`. A failed background write is raised on the training thread at the next request or
join, so it fails the run exactly like a failed synchronous save.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

HOLD_ENV = "TRM_CLUSTER_HOLD_ASYNC_SAVE"
"""Test seam: a file path; the writer thread waits until that file exists before it writes, so a
test can act while a background save is provably still unwritten."""

_IMMUTABLE = (int, float, bool, str, bytes, complex, type(None), torch.dtype, torch.device, torch.Size)


@dataclass
class SaveStats:
    """What the background saves of one process cost the training thread, and what they did."""

    started: int = 0
    """Saves handed to the writer thread."""
    waited: int = 0
    """Save requests that found the previous save still in flight and waited for it."""
    waited_s: float = 0.0
    """Time the training thread spent in those waits."""
    stall_s: list[float] = field(default_factory=list)
    """Per background save: the training thread's part (wait, copy off the training path, hand-off)."""
    write_s: list[float] = field(default_factory=list)
    """Per background save: the writer thread's part (hash, write, fsync, publish)."""


class SnapshotCopy:
    """A state copied off the training path; on CUDA the copies may still be running (see wait)."""

    def __init__(self, state: Any, copies: torch.cuda.Event | None) -> None:
        self.state = state
        self._copies = copies

    def wait(self) -> Any:
        """The state, once every device-to-host copy has landed (called on the writer thread)."""
        if self._copies is not None:
            self._copies.synchronize()
        return self.state


Buffers = dict[tuple[Any, ...], torch.Tensor]
"""Host tensors kept from the previous snapshot, by their place in the state: copying into memory that
is already mapped is several times faster than cloning (4x for 100 MB here), at the price of one
checkpoint's worth of host memory held between saves."""


def snapshot_copy(state: Any, buffers: Buffers | None = None) -> SnapshotCopy:
    """A copy of a nested state that later in-place changes (the next optimizer step) cannot reach.

    ``buffers``: the previous snapshot's host tensors, reused where shape and dtype match (only once
    that snapshot is written: :meth:`BackgroundSaver.begin` waits for it). CPU tensors are copied now. CUDA tensors are copied into pinned host memory on a side stream; the
    training stream waits for those copies before its next kernel (so the next step cannot overwrite a
    tensor before it is copied) and the host does not wait at all. Containers are rebuilt, other
    mutable leaves deep-copied. (The CUDA branch has not run yet: no GPU was lent to the session that
    wrote it.)
    """
    kept = buffers if buffers is not None else {}
    if not _holds_cuda(state):
        return SnapshotCopy(_copy_tree(state, None, kept, ()), None)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        copied = _copy_tree(state, side, kept, ())
        done = torch.cuda.Event()
        done.record(side)
    torch.cuda.current_stream().wait_event(done)
    return SnapshotCopy(copied, done)


def _copy_tree(value: Any, side: torch.cuda.Stream | None, kept: Buffers, path: tuple[Any, ...]) -> Any:
    if isinstance(value, torch.Tensor):
        return _copy_tensor(value.detach(), side, kept, path)
    if isinstance(value, Mapping):
        return {key: _copy_tree(item, side, kept, (*path, key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        items = [_copy_tree(item, side, kept, (*path, i)) for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, _IMMUTABLE):
        return value
    return copy.deepcopy(value)


def _copy_tensor(
    tensor: torch.Tensor, side: torch.cuda.Stream | None, kept: Buffers, path: tuple[Any, ...]
) -> Any:
    on_device = tensor.is_cuda and side is not None
    host = kept.get(path)
    if host is None or host.shape != tensor.shape or host.dtype != tensor.dtype or tensor.is_sparse:
        if tensor.is_sparse or (not on_device and not tensor.is_contiguous()):
            return tensor.to("cpu", copy=True)
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=on_device)
        kept[path] = host
    host.copy_(tensor, non_blocking=on_device)
    if on_device:
        tensor.record_stream(side)  # type: ignore[arg-type]
    return host


def _holds_cuda(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_cuda
    if isinstance(value, Mapping):
        return any(_holds_cuda(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_cuda(item) for item in value)
    return False


class BackgroundSaver:
    """One writer thread's worth of checkpoint writes: at most one in flight."""

    def __init__(self) -> None:
        self.stats = SaveStats()
        self.buffers: Buffers = {}
        """The host memory of the previous snapshot, reused by the next (see :data:`Buffers`)."""
        self.waiting = threading.Event()
        """Set while a save request waits for the save in flight."""
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def begin(self) -> None:
        """Before a new save is staged: wait for the one in flight (counted), so that at most one
        copy of the state is held besides the live one; raise a failed save's error."""
        if self.in_flight:
            began = time.perf_counter()
            self.waiting.set()
            try:
                self.wait()
            finally:
                self.waiting.clear()
            self.stats.waited += 1
            self.stats.waited_s += time.perf_counter() - began
        self.wait()

    def start(self, write: Callable[[], None], stall_started: float) -> None:
        """Run ``write`` on a new writer thread (call :meth:`begin` first). ``stall_started``:
        ``time.perf_counter()`` when the training thread began this save, so the recorded stall is
        everything the save cost the training thread (wait, copy, hand-off)."""
        assert not self.in_flight, "begin() first: one save in flight at most"
        self.stats.started += 1
        self._thread = threading.Thread(target=self._run, args=(write,), name="trm-cluster-save")
        self._thread.start()
        self.stats.stall_s.append(time.perf_counter() - stall_started)

    def wait(self) -> None:
        """Join the save in flight; raise its error on this (the training) thread if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self, write: Callable[[], None]) -> None:
        began = time.perf_counter()
        try:
            _hold_if_asked()
            write()
        except BaseException as error:  # handed to the training thread
            self._error = error
        finally:
            self.stats.write_s.append(time.perf_counter() - began)


def _hold_if_asked() -> None:
    gate = os.environ.get(HOLD_ENV)
    if not gate:
        return
    path = Path(gate)
    while not path.exists():
        time.sleep(0.01)
