"""Peptide fragment physics, synthetic spectra and MGF reading.

Everything the model sees comes from here. Synthetic batches are drawn from a local
``torch.Generator`` seeded from (seed, stream, step), so the data position of a run is a pure
function of the step and needs no state of its own in a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from trm_cluster.workloads.trm.peptides import (
    H2O,
    PROTON,
    RESIDUE_MASSES,
    TOKEN_INDEX,
    VOCAB,
    DataSettings,
    UnknownResidueError,
    neutral_mass,
    parse_sequence,
)

MIN_MZ = 50.0
MAX_MZ = 2500.0
PAD_MZ = 1.0e5
"""m/z given to padding peaks: sorts after every real peak and matches no query."""


def mass_table(device: torch.device | None = None) -> Tensor:
    """Residue mass per vocabulary index (0 for the end token), float32."""
    values = [0.0] + [RESIDUE_MASSES[token] for token in VOCAB[1:]]
    return torch.tensor(values, dtype=torch.float32, device=device)


# ---------------------------------------------------------------------------------------------
# Batches


@dataclass
class SpectrumBatch:
    """A batch of spectra with their target sequences, as fixed-shape tensors.

    Peaks are sorted by m/z, padded with ``PAD_MZ`` and intensity 0; intensities are sqrt-scaled
    and divided by the spectrum's largest. ``tokens`` holds targets padded with the end token.
    """

    mz: Tensor  # (B, P) float32
    intensity: Tensor  # (B, P) float32
    precursor_mass: Tensor  # (B,) float32, neutral M
    precursor_charge: Tensor  # (B,) int64
    tokens: Tensor  # (B, L) int64
    lengths: Tensor  # (B,) int64

    def to(self, device: torch.device) -> SpectrumBatch:
        return SpectrumBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def replace_rows(self, mask: Tensor, fresh: SpectrumBatch) -> SpectrumBatch:
        """Rows where ``mask`` is true come from ``fresh`` (same shapes)."""
        out: dict[str, Tensor] = {}
        for f in fields(self):
            old, new = getattr(self, f.name), getattr(fresh, f.name)
            shaped = mask.view(-1, *([1] * (old.dim() - 1)))
            out[f.name] = torch.where(shaped, new, old)
        return SpectrumBatch(**out)

    def rows(self, index: Tensor | slice) -> SpectrumBatch:
        return SpectrumBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def state_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name).detach().cpu().clone() for f in fields(self)}

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor], device: torch.device) -> SpectrumBatch:
        return cls(**{f.name: state[f.name].to(device) for f in fields(cls)})

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """SplitMix64-style combination of integers into a 63-bit seed."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & _MASK64
        state ^= state >> 31
    return state & ((1 << 63) - 1)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, stream, step): never the global RNG."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(_mix(seed, stream, step))
    return generator


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def prepare_peaks(mz: Tensor, intensity: Tensor, valid: Tensor, max_peaks: int) -> tuple[Tensor, Tensor]:
    """Keep the ``max_peaks`` most intense valid peaks in [50, 2500], sqrt-scale, normalise, sort.

    Inputs are (B, S); outputs are (B, max_peaks) sorted by m/z with padding at the end.
    """
    valid = valid & (mz >= MIN_MZ) & (mz <= MAX_MZ) & (intensity > 0)
    scaled = torch.where(valid, intensity.clamp(min=0).sqrt(), torch.zeros_like(intensity))
    rows, width = scaled.shape
    if width < max_peaks:
        pad = max_peaks - width
        scaled = torch.cat([scaled, scaled.new_zeros(rows, pad)], dim=1)
        mz = torch.cat([mz, mz.new_full((rows, pad), PAD_MZ)], dim=1)
        valid = torch.cat([valid, valid.new_zeros(rows, pad)], dim=1)
    # Rank valid peaks by intensity; invalid ones get -1 so they come last.
    ranked = torch.where(valid, scaled, torch.full_like(scaled, -1.0))
    top = torch.topk(ranked, max_peaks, dim=1, sorted=True).indices
    kept_valid = valid.gather(1, top)
    kept_mz = torch.where(kept_valid, mz.gather(1, top), torch.full_like(scaled[:, :max_peaks], PAD_MZ))
    kept_int = torch.where(kept_valid, scaled.gather(1, top), torch.zeros_like(kept_mz))
    peak = kept_int.amax(dim=1, keepdim=True).clamp(min=1e-12)
    kept_int = kept_int / peak
    order = torch.argsort(kept_mz, dim=1, stable=True)
    return kept_mz.gather(1, order).contiguous(), kept_int.gather(1, order).contiguous()


def generate_batch(
    settings: DataSettings,
    batch_size: int,
    max_length: int,
    max_peaks: int,
    generator: torch.Generator,
) -> SpectrumBatch:
    """Draw random peptides and their synthetic b/y spectra (on the CPU)."""
    alphabet = torch.tensor([TOKEN_INDEX[t] for t in settings.alphabet], dtype=torch.int64)
    masses = mass_table().to(torch.float64)
    lengths = torch.randint(
        settings.min_length, settings.max_length + 1, (batch_size,), generator=generator, dtype=torch.int64
    )
    choice = torch.randint(0, len(alphabet), (batch_size, max_length), generator=generator)
    positions = torch.arange(max_length).unsqueeze(0)
    inside = positions < lengths.unsqueeze(1)
    tokens = torch.where(inside, alphabet[choice], torch.zeros_like(choice))
    residue = masses[tokens]  # (B, L) float64, 0 past the end
    prefix = residue.cumsum(dim=1)  # P_1 .. P_L
    total = prefix[:, -1:] + H2O  # neutral M, (B, 1)

    # Fragment ions for each split k = 1 .. L-1 (prefix P_k | suffix).
    split = prefix[:, :-1]
    split_ok = positions[:, :-1] + 1 < lengths.unsqueeze(1)
    ion_mz = [split + PROTON, total - split + PROTON]
    ion_low, ion_high = [0.15, 0.3], [0.8, 1.0]
    if 2 in settings.fragment_charges:
        ion_mz += [(split + 2 * PROTON) / 2, (total - split + 2 * PROTON) / 2]
        ion_low += [0.05, 0.1]
        ion_high += [0.4, 0.5]
    signal_mz = torch.cat(ion_mz, dim=1)
    signal_int = torch.cat(
        [
            _uniform(tuple(split.shape), lo, hi, generator).double()
            for lo, hi in zip(ion_low, ion_high, strict=True)
        ],
        dim=1,
    )
    signal_ok = split_ok.repeat(1, len(ion_mz))
    if settings.dropout > 0:
        signal_ok = signal_ok & (torch.rand(tuple(signal_ok.shape), generator=generator) >= settings.dropout)

    # Noise peaks: twice the mean as candidates, each kept with probability 1/2.
    width = 2 * settings.noise_peaks
    if width > 0:
        upper = (total + PROTON).expand(batch_size, width)
        noise_mz = MIN_MZ + (upper - MIN_MZ) * torch.rand((batch_size, width), generator=generator).double()
        noise_int = _uniform((batch_size, width), 0.05, 0.6, generator).double()
        noise_ok = torch.rand((batch_size, width), generator=generator) < 0.5
        all_mz = torch.cat([signal_mz, noise_mz], dim=1)
        all_int = torch.cat([signal_int, noise_int], dim=1)
        all_ok = torch.cat([signal_ok, noise_ok], dim=1)
    else:
        all_mz, all_int, all_ok = signal_mz, signal_int, signal_ok

    charge_choice = torch.tensor(settings.precursor_charges, dtype=torch.int64)
    charge = charge_choice[torch.randint(0, len(charge_choice), (batch_size,), generator=generator)]
    precursor = total.squeeze(1)
    if settings.ppm > 0:
        all_mz = all_mz * (
            1 + settings.ppm * 1e-6 * torch.randn(tuple(all_mz.shape), generator=generator).double()
        )
        precursor_mz_ = (precursor + charge * PROTON) / charge
        precursor_mz_ = precursor_mz_ * (
            1 + settings.ppm * 1e-6 * torch.randn((batch_size,), generator=generator).double()
        )
        precursor = precursor_mz_ * charge - charge * PROTON
    # Intensities were drawn linear; prepare_peaks takes the square root like real preprocessing.
    peak_mz, peak_int = prepare_peaks(all_mz.float(), (all_int**2).float(), all_ok, max_peaks)
    return SpectrumBatch(
        mz=peak_mz,
        intensity=peak_int,
        precursor_mass=precursor.float(),
        precursor_charge=charge,
        tokens=tokens,
        lengths=lengths,
    )


# ---------------------------------------------------------------------------------------------
# MGF


@dataclass(frozen=True)
class Spectrum:
    """One MGF entry. ``sequence`` is empty and ``problem`` says why when it cannot be used."""

    title: str
    precursor_mz: float
    charge: int
    mz: tuple[float, ...]
    intensity: tuple[float, ...]
    raw_sequence: str
    sequence: tuple[str, ...]
    problem: str = ""

    @property
    def supported(self) -> bool:
        return not self.problem

    @property
    def neutral_mass(self) -> float:
        return neutral_mass(self.precursor_mz, self.charge)


def read_mgf(path: str | Path) -> list[Spectrum]:
    """Read every entry of an MGF file; entries with unknown residues are kept but flagged."""
    spectra: list[Spectrum] = []
    header: dict[str, str] = {}
    mz: list[float] = []
    intensity: list[float] = []
    inside = False
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "!")):
            continue
        if line == "BEGIN IONS":
            inside, header, mz, intensity = True, {}, [], []
        elif line == "END IONS":
            if inside:
                spectra.append(_spectrum(header, mz, intensity))
            inside = False
        elif inside and "=" in line and not line[0].isdigit():
            key, _, value = line.partition("=")
            header[key.strip().upper()] = value.strip()
        elif inside:
            parts = line.split()
            mz.append(float(parts[0]))
            intensity.append(float(parts[1]) if len(parts) > 1 else 1.0)
    return spectra


def _spectrum(header: Mapping[str, str], mz: list[float], intensity: list[float]) -> Spectrum:
    charge_text = header.get("CHARGE", "2+").split(",")[0].strip()
    sign = -1 if charge_text.endswith("-") else 1
    charge = sign * int(charge_text.rstrip("+-") or "2")
    raw = header.get("SEQ", "")
    problem = ""
    sequence: tuple[str, ...] = ()
    if not raw:
        problem = "no SEQ"
    else:
        try:
            sequence = parse_sequence(raw)
        except UnknownResidueError as error:
            problem = str(error)
    return Spectrum(
        title=header.get("TITLE", ""),
        precursor_mz=float(header.get("PEPMASS", "0").split()[0]),
        charge=charge,
        mz=tuple(mz),
        intensity=tuple(intensity),
        raw_sequence=raw,
        sequence=sequence,
        problem=problem,
    )


def batch_from_spectra(spectra: Iterable[Spectrum], max_length: int, max_peaks: int) -> SpectrumBatch:
    """Real spectra as a batch; sequences longer than ``max_length`` are truncated in ``tokens``."""
    items = list(spectra)
    width = max(1, max(len(s.mz) for s in items))
    mz = torch.full((len(items), width), PAD_MZ, dtype=torch.float32)
    intensity = torch.zeros((len(items), width), dtype=torch.float32)
    valid = torch.zeros((len(items), width), dtype=torch.bool)
    tokens = torch.zeros((len(items), max_length), dtype=torch.int64)
    for row, spectrum in enumerate(items):
        count = len(spectrum.mz)
        mz[row, :count] = torch.tensor(spectrum.mz, dtype=torch.float32)
        intensity[row, :count] = torch.tensor(spectrum.intensity, dtype=torch.float32)
        valid[row, :count] = True
        ids = [TOKEN_INDEX[t] for t in spectrum.sequence[:max_length]]
        tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    peak_mz, peak_int = prepare_peaks(mz, intensity, valid, max_peaks)
    return SpectrumBatch(
        mz=peak_mz,
        intensity=peak_int,
        precursor_mass=torch.tensor([s.neutral_mass for s in items], dtype=torch.float32),
        precursor_charge=torch.tensor([s.charge for s in items], dtype=torch.int64),
        tokens=tokens,
        lengths=torch.tensor([len(s.sequence) for s in items], dtype=torch.int64),
    )
