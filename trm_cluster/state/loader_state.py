"""A torchdata ``StatefulDataLoader``'s state as an exact resume needs it, repeated any number of times.

What torchdata 0.11 saves is exact for one resume; two things drift on the next (found with an infinite
``IterableDataset``, workers and a curriculum that makes new iterators, as the peptide-TRM code does):

- A dataset without ``state_dict`` is fast-forwarded: the restored iterator replays the batches already
  yielded, and counts them a second time. Its next ``state_dict`` then holds twice the position, so a
  second resume in the same iterator replays too far (or fails: "last_yielded_worker_id does not match").
- Each new iterator draws its workers' base seed from the loader's ``generator``, whose state torchdata
  does not save for an iterable dataset. A resumed process that then makes the next iterator (a new
  stage, a new epoch) draws other worker seeds than an uninterrupted run: other samples from then on.

So the generator's state is saved beside the loader's (after ``state_dict()``, which may itself make the
iterator), and on restore the first iterator the loop makes is corrected once: its count set back to the
position, and the generator set back to its saved state, since that iterator's draws were made before
the save. A loader without a generator of its own draws its workers' seed (and a shuffling sampler's)
from the global torch RNG instead: that draw, too, was made before the save, so the first iterator's is
undone (the session captures the RNG streams after the registered state, so this holds when the save's
``state_dict()`` made the iterator too). A map-style dataset keeps torchdata's own state (its sampler
restores the generator).

A registered loader's workers also ignore the stop signals (:func:`quiet_workers`), whatever start method
makes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.data import IterableDataset

from trm_cluster.core.signals import ignore_stop_signals

log = logging.getLogger(__name__)

FORMAT = "trm_cluster.loader/1"
"""Marks this wrapper in a checkpoint; a loader's state saved before it is the bare torchdata dict."""
IDLE_COUNTERS = (
    "_snapshot._main_snapshot._sampler_iter_yielded",
    "_snapshot._main_snapshot._sampler_iter_state.*",
)
"""torchdata's counters of the sampler of an iterable dataset (an endless constant sampler, whose indices
are never read): the replay counts them twice too, and nothing restores data from them. The doctor leaves
them out of its comparison (doctor/compare.py)."""


def is_stateful_loader(obj: Any) -> bool:
    return isinstance(obj, torch.utils.data.DataLoader) and callable(getattr(obj, "load_state_dict", None))


def _iterable_with_generator(loader: Any) -> bool:
    return isinstance(loader.dataset, IterableDataset) and isinstance(loader.generator, torch.Generator)


def loader_state(loader: Any) -> dict[str, Any]:
    """The loader's own state, and for an iterable dataset its generator's, taken after it."""
    state: dict[str, Any] = {
        "format": FORMAT,
        "loader": loader.state_dict(),
        "iterable": isinstance(loader.dataset, IterableDataset),
    }
    if _iterable_with_generator(loader):
        state["generator"] = loader.generator.get_state()
    return state


def restore_loader(loader: Any, state: Mapping[str, Any]) -> None:
    """Load ``state`` (this module's, or a bare torchdata dict of an older checkpoint) into ``loader``."""
    if state.get("format") != FORMAT:
        loader.load_state_dict(state)
        return
    loader.load_state_dict(state["loader"])
    restore_generator = "generator" in state and _iterable_with_generator(loader)
    if restore_generator:
        loader.generator.set_state(state["generator"])
    replayed = _correct_first_iterator(loader, restore_generator)
    if replayed and not callable(getattr(loader.dataset, "load_state_dict", None)):
        log.warning("%s", replay_warning(loader.dataset, replayed))


def replay_warning(dataset: Any, replayed: int) -> str:
    """Why the resumed iterator replays batches, and what that asks of the dataset."""
    return (
        f"run.restore(data=...): the {type(dataset).__name__} has no state_dict()/load_state_dict(), so the "
        f"resumed iterator replays the {replayed} batch(es) it had yielded (torchdata's fast-forward): exact "
        "only if each worker's samples are a function of its worker seed and their order (not the clock, "
        "not a file listing's order); give the dataset state_dict()/load_state_dict() to skip the replay"
    )


def _replayed_and_position(state: Mapping[str, Any]) -> tuple[int, int]:
    """What a restored iterator replays (the snapshot's step with workers, the count without) and the
    position it resumes at (that plus the steps after the snapshot)."""
    snapshot = state.get("_snapshot")
    if isinstance(snapshot, Mapping) and "_snapshot_step" in snapshot:
        replayed = int(snapshot["_snapshot_step"])
        return replayed, replayed + int(state.get("_steps_since_snapshot", 0))
    replayed = int(state.get("_num_yielded", 0) or 0)
    return replayed, replayed


def _correct_first_iterator(loader: Any, restore_generator: bool) -> int:
    """Wrap the loader's ``_get_iterator`` for one call: the iterator made from the restored state.
    Returns how many batches that iterator will replay."""
    make: Callable[[], Any] = loader._get_iterator
    replayed, position = _replayed_and_position(loader.next_iter_state or {})

    def first_iterator() -> Any:
        del loader._get_iterator  # once: later iterators are the loader's own
        generator = loader.generator.get_state() if restore_generator else None
        global_rng = torch.get_rng_state() if loader.generator is None else None
        iterator = make()
        if global_rng is not None:
            torch.set_rng_state(global_rng)
        if replayed and getattr(iterator, "_num_yielded", None) == position + replayed:
            _uncount(iterator, replayed)
        if generator is not None:
            loader.generator.set_state(generator)
        return iterator

    loader._get_iterator = first_iterator
    return replayed


def _uncount(iterator: Any, replayed: int) -> None:
    """Take the replayed batches out of the iterator's count, and out of a snapshot taken while it
    replayed (its step is then past the replay's start); a snapshot from before is right as it is."""
    iterator._num_yielded -= replayed
    snapshot = getattr(iterator, "_snapshot", None)
    if isinstance(snapshot, dict) and int(snapshot.get("_snapshot_step", 0)) > replayed:
        snapshot["_snapshot_step"] -= replayed


class QuietWorkerInit:
    """A ``worker_init_fn`` that makes the worker ignore the stop signals, then runs the loader's own.

    Slurm signals every process of the job, loader workers included. A forked worker inherits the
    session's handler (which ignores a child's signals), but one made by ``spawn`` or ``forkserver``
    (Python 3.14's default) starts with the default action for USR2: it would die of a preemption."""

    def __init__(self, then: Callable[[int], None] | None) -> None:
        self.then = then

    def __call__(self, worker_id: int) -> None:
        ignore_stop_signals(worker_id)
        if self.then is not None:
            self.then(worker_id)


def quiet_workers(loader: torch.utils.data.DataLoader[Any]) -> None:
    """Make the workers of ``loader`` ignore the stop signals (once; its own init function still runs)."""
    own = loader.worker_init_fn
    if loader.num_workers > 0 and not isinstance(own, QuietWorkerInit) and own is not ignore_stop_signals:
        loader.worker_init_fn = QuietWorkerInit(loader.worker_init_fn)
