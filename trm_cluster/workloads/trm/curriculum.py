"""Curricula: data difficulty and auxiliary loss weights as a pure function of the global step.

Nothing here keeps state: the trainer asks for the settings of step ``s`` at every step, so a
resumed run under a changed curriculum gets the new stage's data and weights at once, not at the
next stage boundary. Stage boundaries are fractions of ``horizon`` steps so the same named
curriculum fits a 400-step CPU run and a 60k-step cluster run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from trm_cluster.workloads.trm.peptides import DataSettings

EASY_ALPHABET: tuple[str, ...] = ("G", "A", "S", "P", "V", "T")
MEDIUM_ALPHABET: tuple[str, ...] = (*EASY_ALPHABET, "L", "N", "D", "E", "K", "F")
FULL_ALPHABET: tuple[str, ...] = (
    *MEDIUM_ALPHABET,
    "C[Carbamidomethyl]",
    "Q",
    "M",
    "H",
    "R",
    "Y",
    "W",
)
"""The 20 standard residues (L stands for L/I, cysteine carbamidomethylated)."""


@dataclass
class CurriculumConfig:
    """Which named curriculum to follow, plus optional overrides (None: the curriculum's own)."""

    name: str = "default"
    """One of: default, delayed-spectrum, easy."""
    horizon: int = 400
    """Steps over which the named curriculum lays out its stage boundaries."""
    final_max_length: int = 8
    """Longest peptide of the last stage (earlier stages are shorter)."""
    spectrum_loss_start: int | None = None
    """Step at which the spectrum-matching loss switches on."""
    spectrum_loss_ramp_steps: int | None = None
    """Steps over which its weight rises from the initial to the final value."""
    spectrum_loss_initial: float | None = None
    spectrum_loss_final: float | None = None


@dataclass(frozen=True)
class Stage:
    """One stage: the data it draws until ``until_step`` (exclusive) and its constant loss weights."""

    name: str
    until_step: int
    data: DataSettings
    precursor_weight: float = 0.0


@dataclass(frozen=True)
class SpectrumSchedule:
    """Spectrum-matching loss weight: 0 before ``start``, then a linear ramp, then ``final``."""

    start: int
    ramp_steps: int
    initial: float
    final: float

    def weight(self, step: int) -> float:
        if step < self.start:
            return 0.0
        if self.ramp_steps <= 0:
            return self.final
        progress = min(1.0, (step - self.start) / self.ramp_steps)
        return self.initial + (self.final - self.initial) * progress


@dataclass(frozen=True)
class StageSettings:
    """Everything the trainer needs for one step."""

    index: int
    name: str
    data: DataSettings
    spectrum_weight: float
    precursor_weight: float


@dataclass(frozen=True)
class Curriculum:
    name: str
    stages: tuple[Stage, ...]
    spectrum: SpectrumSchedule

    def stage_index(self, step: int) -> int:
        for index, stage in enumerate(self.stages):
            if step < stage.until_step:
                return index
        return len(self.stages) - 1

    def settings(self, step: int) -> StageSettings:
        index = self.stage_index(step)
        stage = self.stages[index]
        return StageSettings(
            index=index,
            name=stage.name,
            data=stage.data,
            spectrum_weight=self.spectrum.weight(step),
            precursor_weight=stage.precursor_weight,
        )

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def _at(horizon: int, fraction: float) -> int:
    return round(horizon * fraction)


def _data_stages(config: CurriculumConfig) -> tuple[Stage, ...]:
    h = config.horizon
    longest = config.final_max_length
    easy = DataSettings(alphabet=EASY_ALPHABET, min_length=3, max_length=min(5, longest))
    medium = DataSettings(
        alphabet=MEDIUM_ALPHABET,
        min_length=3,
        max_length=min(7, longest),
        noise_peaks=4,
        dropout=0.1,
        ppm=5.0,
        precursor_charges=(2, 3),
    )
    hard = DataSettings(
        alphabet=FULL_ALPHABET,
        min_length=4,
        max_length=longest,
        noise_peaks=8,
        dropout=0.15,
        ppm=10.0,
        fragment_charges=(1, 2),
        precursor_charges=(2, 3),
    )
    return (
        Stage("easy", _at(h, 0.25), easy),
        Stage("medium", _at(h, 0.5), medium, precursor_weight=0.02),
        Stage("hard", 2**62, hard, precursor_weight=0.02),
    )


def _default(config: CurriculumConfig) -> Curriculum:
    h = config.horizon
    schedule = SpectrumSchedule(start=_at(h, 0.25), ramp_steps=_at(h, 0.1), initial=0.06, final=0.25)
    return Curriculum("default", _data_stages(config), schedule)


def _delayed_spectrum(config: CurriculumConfig) -> Curriculum:
    """Like default, but the spectrum-matching loss waits until half the horizon (15k -> 30k)."""
    h = config.horizon
    schedule = SpectrumSchedule(start=_at(h, 0.5), ramp_steps=_at(h, 0.1), initial=0.06, final=0.25)
    return Curriculum("delayed-spectrum", _data_stages(config), schedule)


def _easy(config: CurriculumConfig) -> Curriculum:
    """One clean, short, six-residue stage: for smoke tests and debugging."""
    stage = Stage("easy", 2**62, _data_stages(config)[0].data)
    return Curriculum("easy", (stage,), SpectrumSchedule(start=2**62, ramp_steps=0, initial=0.0, final=0.0))


CURRICULA: dict[str, Callable[[CurriculumConfig], Curriculum]] = {
    "default": _default,
    "delayed-spectrum": _delayed_spectrum,
    "easy": _easy,
}


def build_curriculum(config: CurriculumConfig) -> Curriculum:
    """Resolve a named curriculum and apply the config's overrides."""
    try:
        factory = CURRICULA[config.name]
    except KeyError:
        known = ", ".join(sorted(CURRICULA))
        raise ValueError(f"unknown curriculum {config.name!r} (known: {known})") from None
    if config.horizon <= 0:
        raise ValueError(f"curriculum horizon must be positive, got {config.horizon}")
    curriculum = factory(config)
    schedule = curriculum.spectrum
    if config.spectrum_loss_start is not None:
        schedule = replace(schedule, start=config.spectrum_loss_start)
    if config.spectrum_loss_ramp_steps is not None:
        schedule = replace(schedule, ramp_steps=config.spectrum_loss_ramp_steps)
    if config.spectrum_loss_initial is not None:
        schedule = replace(schedule, initial=config.spectrum_loss_initial)
    if config.spectrum_loss_final is not None:
        schedule = replace(schedule, final=config.spectrum_loss_final)
    return replace(curriculum, spectrum=schedule)
