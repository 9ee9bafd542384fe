"""A StatefulDataLoader over an infinite IterableDataset with workers and a curriculum that makes a new
iterator at every stage, as the peptide-TRM researchers' loop has it: the batches a loop consumes across
any number of stops, within a stage and across stages, are those of an uninterrupted run. Each segment
builds a new loader (new workers), as a resumed process does, and restores it through the registered
state the session saves."""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
from torch.utils.data import IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from trm_cluster.state.registered import RegisteredState

STAGE_STARTS = (0, 6, 12)  # the curriculum: a new stage (and a new iterator) at these steps
STEPS = 18
WORKERS = 2


class Stream(IterableDataset[torch.Tensor]):
    """Infinite samples drawn from Python's RNG, seeded per worker by torch (as their dataset is)."""

    def __init__(self) -> None:
        self.stage = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        rng = random.Random(torch.initial_seed())
        while True:
            yield torch.tensor([self.stage + rng.random()])


def stage_of(step: int) -> int:
    return max(i for i, start in enumerate(STAGE_STARTS) if step >= start)


def make_loader(persistent: bool = False, own_generator: bool = True) -> StatefulDataLoader:
    return StatefulDataLoader(
        Stream(), batch_size=2, num_workers=WORKERS, persistent_workers=persistent,
        generator=torch.Generator().manual_seed(7) if own_generator else None,
    )  # fmt: skip


def segment(
    start: int, stop: int, saved: dict[str, Any] | None, bare: bool, persistent: bool = False,
    own_generator: bool = True,
) -> tuple[list[torch.Tensor], dict[str, Any]]:  # fmt: skip
    """Steps [start, stop) in a fresh loader, restored from ``saved``; its batches and the state saved at
    ``stop``. ``bare``: the loader's own torchdata state, without this package's correction. Each step
    also draws the global torch RNG (as dropout does), restored last at a resume and taken after the
    registered state at a save, as the session does."""
    loader = make_loader(persistent, own_generator)
    state = RegisteredState({"data": loader})
    if saved is None:
        torch.manual_seed(0)
    else:
        if bare:
            loader.load_state_dict(saved["data"])
        else:
            state.load_state_dict(saved)
        torch.set_rng_state(saved["rng"])
    # the recipe: the first iter() resumes the saved iterator, so the dataset is as it was when that one
    # was made (the stage of the step before); the loop's own stage change then happens as it would have
    loader.dataset.stage = stage_of(max(start - 1, 0))
    batches, consumed = iter(loader), []
    for step in range(start, stop):
        if step in STAGE_STARTS and step > 0:  # their loop: a new stage makes a new iterator
            loader.dataset.stage = stage_of(step)
            batches = iter(loader)
        consumed += [next(batches), torch.rand(1)]
    saved = {"data": loader.state_dict()} if bare else state.state_dict()
    saved["rng"] = torch.get_rng_state()
    del batches
    return consumed, saved


def run(
    stops: Sequence[int], bare: bool = False, persistent: bool = False, own_generator: bool = True
) -> list[torch.Tensor]:
    consumed: list[torch.Tensor] = []
    saved: dict[str, Any] | None = None
    for start, stop in zip((0, *stops), (*stops, STEPS), strict=True):
        batches, saved = segment(start, stop, saved, bare, persistent, own_generator)
        consumed += batches
    return consumed


def same(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def uninterrupted() -> list[torch.Tensor]:
    return run(())


@pytest.mark.parametrize(
    "stops",
    [
        (3, 4),  # two stops in the first stage, one step apart
        (7, 9, 10),  # three in one stage, the first mid-stage
        (5, 6, 13, 17),  # the last step before a stage, the first of one, then two in the last stage
    ],
)
def test_repeated_stops_consume_the_batches_of_an_uninterrupted_run(
    uninterrupted: list[torch.Tensor], stops: tuple[int, ...]
) -> None:
    assert same(run(stops), uninterrupted)


@pytest.mark.parametrize("stops", [(3, 4, 5), (5, 6)])
def test_persistent_workers_are_exact_through_repeated_stops(stops: tuple[int, ...]) -> None:
    """``persistent_workers=True``: one iterator, reset (not remade) at each stage. Its workers keep the
    dataset copy they started with (torch's behaviour), so a stage set later on the main process's
    dataset never reaches them; exact through stops before the first stage change after the workers
    started (docs/your-own-loop.md says why no resume can bring back a stage the workers never saw)."""
    uninterrupted = run((), persistent=True)
    assert not same(uninterrupted, run(()))  # the stages never reached the persistent workers
    assert same(run(stops, persistent=True), uninterrupted)


@pytest.mark.parametrize("stops", [(3, 4), (5, 6, 13, 17)])
def test_a_loader_without_a_generator_of_its_own_is_exact_through_repeated_stops(
    stops: tuple[int, ...],
) -> None:
    """Its workers' seeds come from the global torch RNG, which the loop draws too: the resumed process's
    first iterator continues the saved one, so its draw is undone; each later stage's draw is real."""
    uninterrupted = run((), own_generator=False)
    assert same(run(stops, own_generator=False), uninterrupted)


def test_torchdatas_own_state_is_not_exact_on_the_second_stop(uninterrupted: list[torch.Tensor]) -> None:
    """The scenario above fails without the correction: what the test proves is the package's doing."""
    with pytest.raises(ValueError, match="last_yielded_worker_id"):
        run((3, 4), bare=True)  # the replay counted twice: torchdata itself notices here
    # one stop: the next stage's new iterator draws its worker seeds from a generator not restored
    assert not same(run((7,), bare=True), uninterrupted)
    assert same(run((7,)), uninterrupted)


def test_a_checkpoint_saved_before_the_correction_still_loads() -> None:
    loader = make_loader()
    batches = iter(loader)
    first = [next(batches) for _ in range(3)]
    bare = loader.state_dict()  # what a checkpoint of the previous version held for `data`
    del batches
    again = make_loader()
    RegisteredState({"data": again}).load_state_dict({"data": bare})
    assert len(first) == 3 and next(iter(again)).shape == first[0].shape


class SignalsItself(IterableDataset[int]):
    """A worker that is sent the preemption signal, as Slurm sends it to every process of the job."""

    def __iter__(self) -> Iterator[int]:
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.1)
        yield 1


def test_a_registered_loaders_workers_ignore_the_stop_signal_whatever_starts_them() -> None:
    """A ``spawn``ed worker (``forkserver`` is Python 3.14's default) starts with USR2's default action:
    die. Registering the loader chains the signals' ignoring before the loader's own init function."""
    seen: list[int] = []
    loader = StatefulDataLoader(SignalsItself(), num_workers=1, multiprocessing_context="spawn",
                                worker_init_fn=seen.append)  # fmt: skip
    RegisteredState({"data": loader})
    assert next(iter(loader)).tolist() == [1]
    assert loader.worker_init_fn is not None and loader.worker_init_fn.then == seen.append  # type: ignore[attr-defined]


class KeptStream(Stream):
    """A dataset that restores itself (torchdata then skips the replay): nothing to warn about."""

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage = state["stage"]


@pytest.mark.parametrize("dataset", [Stream, KeptStream])
def test_a_resume_that_replays_batches_of_a_dataset_without_state_says_what_it_needs(
    dataset: type[Stream], caplog: pytest.LogCaptureFixture
) -> None:
    loader = StatefulDataLoader(dataset(), batch_size=2, num_workers=WORKERS, generator=torch.Generator())
    batches = iter(loader)
    for _ in range(3):
        next(batches)
    saved = RegisteredState({"data": loader}).state_dict()
    del batches
    again = StatefulDataLoader(dataset(), batch_size=2, num_workers=WORKERS, generator=torch.Generator())
    with caplog.at_level(logging.WARNING, logger="trm_cluster"):
        RegisteredState({"data": again}).load_state_dict(saved)
    warned = (
        "the Stream has no state_dict()/load_state_dict(), so the resumed iterator replays the 3 batch(es)"
    )
    assert (warned in caplog.text) is (dataset is Stream), caplog.text
