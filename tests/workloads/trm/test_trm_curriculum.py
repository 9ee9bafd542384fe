"""Curriculum stages as a function of the step, and a curriculum change on resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trm_testing import build, small_config

from trm_cluster.workloads.trm.curriculum import (
    EASY_ALPHABET,
    FULL_ALPHABET,
    CurriculumConfig,
    build_curriculum,
)
from trm_cluster.workloads.trm.peptides import TOKEN_INDEX
from trm_cluster.workloads.trm.spectra import generate_batch, step_generator
from trm_cluster.workloads.trm.trainer import TRAIN_STREAM


def test_stage_for_step() -> None:
    default = build_curriculum(CurriculumConfig(name="default", horizon=100))
    assert [default.settings(s).index for s in (0, 24, 25, 49, 50, 10_000)] == [0, 0, 1, 1, 2, 2]
    assert default.settings(0).data.alphabet == EASY_ALPHABET
    assert default.settings(60).data.alphabet == FULL_ALPHABET
    assert default.settings(60).data.fragment_charges == (1, 2)
    assert default.settings(24).spectrum_weight == 0.0
    assert default.settings(25).spectrum_weight == pytest.approx(0.06)
    assert default.settings(30).spectrum_weight == pytest.approx(0.06 + 0.19 * 0.5)
    assert default.settings(35).spectrum_weight == pytest.approx(0.25)


def test_delayed_spectrum_and_overrides() -> None:
    delayed = build_curriculum(CurriculumConfig(name="delayed-spectrum", horizon=60_000))
    assert delayed.settings(15_000).spectrum_weight == 0.0
    assert delayed.settings(29_999).spectrum_weight == 0.0
    assert delayed.settings(30_000).spectrum_weight == pytest.approx(0.06)
    assert delayed.settings(40_000).spectrum_weight == pytest.approx(0.25)
    default = build_curriculum(CurriculumConfig(name="default", horizon=60_000))
    assert default.settings(15_000).spectrum_weight == pytest.approx(0.06)
    # same data stages, only the loss weight moves
    assert delayed.settings(20_000).data == default.settings(20_000).data
    custom = build_curriculum(CurriculumConfig(name="default", horizon=100, spectrum_loss_start=70))
    assert custom.settings(69).spectrum_weight == 0.0
    assert custom.settings(70).spectrum_weight == pytest.approx(0.06)
    with pytest.raises(ValueError, match="unknown curriculum"):
        build_curriculum(CurriculumConfig(name="nope"))


def test_loss_weight_change_applies_on_load(tmp_path: Path) -> None:
    first = build(small_config("default", horizon=20))
    for step in range(7):
        first.train_step(step)
    state = first.state_dict()
    assert first.curriculum.settings(7).spectrum_weight > 0  # default: on since step 5

    resumed = build(small_config("delayed-spectrum", horizon=20))
    resumed.load_state_dict(state)
    assert resumed.settings.spectrum_weight == 0.0  # the new curriculum's weight, at once
    assert not bool(resumed.carry.halted.any())  # same data settings: the carry is kept
    metrics = resumed.train_step(7)
    assert metrics["spectrum_weight"] == 0.0
    assert metrics["stage"] == 1.0


def test_data_change_applies_on_load(tmp_path: Path) -> None:
    first = build(small_config("easy", horizon=20))
    for step in range(12):
        first.train_step(step)
    state = first.state_dict()
    assert state["curriculum"]["config"]["name"] == "easy"

    resumed = build(small_config("default", horizon=20))
    resumed.load_state_dict(state)
    # Step 12 is in default's last stage (from step 10): its data and weights apply now.
    assert resumed.settings.index == 2
    assert resumed.settings.name == "hard"
    assert resumed.settings.data.alphabet == FULL_ALPHABET
    assert bool(resumed.carry.halted.all())  # rows drawn under "easy" are replaced
    metrics = resumed.train_step(12)
    assert metrics["stage"] == 2.0
    assert metrics["precursor_weight"] == pytest.approx(0.02)
    assert bool((resumed.carry.steps == 1).all())
    config = resumed.config
    expected = generate_batch(
        resumed.curriculum.settings(12).data,
        config.batch_size,
        config.max_length,
        config.max_peaks,
        step_generator(resumed.data_seed, 12, stream=TRAIN_STREAM),
    )
    assert torch.equal(resumed.carry.data.tokens, expected.tokens)
    easy_ids = {TOKEN_INDEX[t] for t in first.settings.data.alphabet} | {0}
    assert not set(resumed.carry.data.tokens.unique().tolist()) <= easy_ids
