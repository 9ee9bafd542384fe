"""The small promises of trm_cluster.core.rng the resume relies on: what a seed sets, what the fingerprint
sees, which seed a re-derived rank gets, and the deterministic-kernel switch (tests/core/test_rng_restore.py
covers capture and restore end to end)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from trm_cluster.core.rng import (
    capture_rng,
    derived_seed,
    restore_rng,
    rng_fingerprint,
    seed_everything,
    use_deterministic_kernels,
)


def test_a_seed_sets_each_global_stream_as_its_own_seed_would() -> None:
    seed = 2**32 + 5  # numpy takes 32 bits: the seed modulo 2**32
    seed_everything(seed)
    drawn = (random.random(), float(np.random.random()), torch.rand(1).item())
    torch_alone = torch.rand(1, generator=torch.Generator().manual_seed(seed)).item()
    assert drawn == (random.Random(seed).random(), np.random.RandomState(5).random(), torch_alone)


def test_the_fingerprint_sees_every_stream_and_every_part_of_numpys() -> None:
    seed_everything(1)
    prints = [rng_fingerprint()]
    numpy_keys, numpy_both, numpy_position = (lambda: np.random.seed(2)), np.random.random, np.random.random
    for draw in (random.random, lambda: torch.rand(1), numpy_keys, numpy_both, numpy_position):
        draw()  # numpy: reseeded (new keys, same position), a draw (both), one more (the position only)
        prints.append(rng_fingerprint())
    assert len(set(prints)) == len(prints)
    assert rng_fingerprint() == prints[-1]  # nothing drawn: the same


def test_a_state_without_numpy_restores_the_other_streams_and_leaves_numpy_alone() -> None:
    seed_everything(3)
    saved = {key: value for key, value in capture_rng().items() if key != "numpy"}
    first, numpy_state = random.random(), np.random.get_state(legacy=True)
    restore_rng(saved)
    assert random.random() == first
    assert str(np.random.get_state(legacy=True)) == str(numpy_state)


def test_numpys_keys_are_saved_as_int64() -> None:
    """torch has no uint32 tensors before 2.3 (the floor is 2.2), and weights_only loads need tensors."""
    assert capture_rng()["numpy"]["keys"].dtype == torch.int64


def test_a_re_derived_rank_gets_the_same_seed_in_every_version() -> None:
    """A world-size change re-derives a rank's streams from (run, step, rank): a rerun must draw the same."""
    assert derived_seed("run", 100, 0) == 2217349428016030865  # sha256's 8 bytes are >= 2**63 here
    assert derived_seed("run", 100, 1) == 8944536492810042798
    assert derived_seed("run", 0, 0) == 6252701243863946302


@pytest.fixture
def kernel_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], benchmark


def test_deterministic_kernels_switch_everything_an_exact_cuda_resume_needs(kernel_settings: None) -> None:
    torch.backends.cudnn.benchmark = True
    use_deterministic_kernels()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"  # a user's own choice is kept
    use_deterministic_kernels()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
