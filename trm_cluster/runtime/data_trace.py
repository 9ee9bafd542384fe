"""What each step consumed, for the resume doctor: a fingerprint of the batches a DataLoader handed the loop.

Why: loader internals can agree while the data does not (a curriculum that rebuilt its iterator, a
worker reseeded), and they can disagree harmlessly (torchdata's replay counters). Comparing what the loop
was actually given is the proof. Only in the doctor's runs (``TRM_CLUSTER_TRACE_DATA=1``): every
``DataLoader`` (torchdata's ``StatefulDataLoader`` too) iterated after ``trm_cluster.session()`` hands out
its iterator behind a thin proxy that hashes each batch; the loader's own fast-forward on a resume calls
the real iterator, so replayed batches are never counted. Each checkpoint records the batches since the
previous one (``tracking.consumed``); the doctor compares them step by step.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from trm_cluster.runtime.plan import TRACE_DATA_ENV


class DataTrace:
    """The running fingerprint of the batches handed out since the last checkpoint."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._batches = 0

    def saw(self, batch: Any) -> None:
        _feed(self._hash, batch)
        self._batches += 1

    def take(self) -> dict[str, Any]:
        """The batches since the last call (their count and sha256), and start counting afresh."""
        taken = {"batches": self._batches, "sha256": self._hash.hexdigest()}
        self._hash, self._batches = hashlib.sha256(), 0
        return taken

    def around(self, tracking: Callable[[], Mapping[str, Any]]) -> Callable[[], dict[str, Any]]:
        """``tracking`` (what a checkpoint keeps of the step log) with this step's batches added."""
        return lambda: {**tracking(), "consumed": self.take()}


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        digest.update(b"{")
        for key in value:
            digest.update(f"{key!r}:".encode())
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, list | tuple):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    elif hasattr(value, "tobytes") and hasattr(value, "dtype"):  # numpy arrays and scalars
        digest.update(f"array {value.dtype} {getattr(value, 'shape', ())};".encode() + value.tobytes())
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


class _TracedIterator:
    """The loader's iterator as the loop sees it: each batch passes through the trace."""

    def __init__(self, inner: Any, trace: DataTrace) -> None:
        self._inner, self._trace = inner, trace

    def __iter__(self) -> _TracedIterator:
        return self

    def __next__(self) -> Any:
        batch = next(self._inner)
        self._trace.saw(batch)
        return batch

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


_active: DataTrace | None = None


def trace_from_env() -> DataTrace | None:
    """In a doctor's run: the trace, with every DataLoader class's ``__iter__`` wrapped (once)."""
    global _active
    if os.environ.get(TRACE_DATA_ENV) != "1":
        return None
    if _active is None:
        _active = DataTrace()
        for loader_class in _loader_classes():
            _wrap_iter(loader_class, _active)
    return _active


def _loader_classes() -> Iterator[type]:
    from torch.utils.data import DataLoader

    yield DataLoader
    try:
        from torchdata.stateful_dataloader import StatefulDataLoader
    except ImportError:  # torchdata is optional
        return
    if "__iter__" in vars(StatefulDataLoader):
        yield StatefulDataLoader


def _wrap_iter(loader_class: type, trace: DataTrace) -> None:
    original = vars(loader_class)["__iter__"]

    def traced_iter(loader: Any) -> _TracedIterator:
        return _TracedIterator(original(loader), trace)

    traced_iter.__doc__ = original.__doc__
    loader_class.__iter__ = traced_iter  # type: ignore[attr-defined]
