"""Spectrum features that match the model's CURRENT answer against the observed peaks.

Plain cross-attention from sequence positions to peaks stayed at chance on a CPU budget. What
learns fast is telling each output position, for every candidate residue, how well the spectrum
supports it given the answer so far: with P_i the mass of the current answer before position i,
candidate r implies the prefix Q = P_i + m_r, so we look up the intensity at the b ion Q + p, the
mirrored y ion M - Q + p, their doubly charged forms, the same ions from the suffix side, and how
the remaining precursor mass compares with zero. The features are recomputed from the argmax of y
before every recursion, so each refinement sees the consequences of the last one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trm_cluster.workloads.trm.peptides import H2O, PROTON, RESIDUE_MASSES
from trm_cluster.workloads.trm.spectra import SpectrumBatch, mass_table

ION_KINDS: tuple[str, ...] = ("b1", "y1", "b2", "y2", "y_suffix", "b_suffix")
CANDIDATE_FEATURES = len(ION_KINDS) + 2  # + completes the precursor, + impossible
POSITION_FEATURES = 10
MAX_CHARGE_FEATURE = 4
MIN_RESIDUE = min(RESIDUE_MASSES.values())
NUM_CANDIDATES = len(RESIDUE_MASSES)


def feature_size() -> int:
    return NUM_CANDIDATES * CANDIDATE_FEATURES + POSITION_FEATURES


def peak_intensity(mz: Tensor, intensity: Tensor, queries: Tensor, tol: float) -> Tensor:
    """Gaussian-weighted intensity of the nearest observed peak on either side of each query.

    ``mz``/``intensity`` are (B, P) with ``mz`` sorted; ``queries`` is (B, Q). Binary search keeps
    the cost O(Q log P), which matters at batch 768 on a GPU.
    """
    peaks = mz.shape[1]
    index = torch.searchsorted(mz, queries.contiguous())
    low = (index - 1).clamp(min=0)
    high = index.clamp(max=peaks - 1)
    scale = -0.5 / (tol * tol)
    d_low = queries - mz.gather(1, low)
    d_high = queries - mz.gather(1, high)
    w_low = intensity.gather(1, low) * torch.exp(scale * d_low * d_low)
    w_high = intensity.gather(1, high) * torch.exp(scale * d_high * d_high)
    return torch.maximum(w_low, w_high)


@dataclass(frozen=True)
class Features:
    """Model input for one recursion, plus the evidence the spectrum loss reuses."""

    x: Tensor  # (B, L, F)
    evidence: Tensor  # (B, L, V): how well the spectrum supports each token at each position


def answer_masses(tokens: Tensor, masses: Tensor) -> Tensor:
    """Residue mass per position of an answer, zero from the first end token on."""
    alive = torch.cumprod((tokens != 0).to(torch.int64), dim=1).bool()
    return torch.where(alive, masses[tokens], torch.zeros((), dtype=masses.dtype, device=masses.device))


def spectrum_features(
    tokens: Tensor, batch: SpectrumBatch, fragment_tol: float, precursor_tol: float
) -> Features:
    """Features of every (position, candidate) for the answer ``tokens`` (B, L)."""
    device = tokens.device
    masses = mass_table(device)
    residue = answer_masses(tokens, masses)  # (B, L)
    prefix = residue.cumsum(dim=1) - residue  # P_i: mass before position i
    total = residue.sum(dim=1, keepdim=True)
    suffix = total - prefix - residue  # mass after position i
    neutral = batch.precursor_mass.to(device).unsqueeze(1)  # M, (B, 1)
    residues_total = neutral - H2O  # what all residues must add up to

    candidates = masses[1:]  # (C,)
    q = prefix.unsqueeze(2) + candidates  # (B, L, C): prefix mass if candidate is placed at i
    u = suffix.unsqueeze(2) + candidates  # suffix mass including the candidate
    m = neutral.unsqueeze(2)
    queries = torch.stack(
        [
            q + PROTON,
            m - q + PROTON,
            (q + 2 * PROTON) / 2,
            (m - q + 2 * PROTON) / 2,
            u + H2O + PROTON,
            m - u - H2O + PROTON,
        ],
        dim=-1,
    )  # (B, L, C, K)
    rows, length, count, kinds = queries.shape
    found = peak_intensity(batch.mz, batch.intensity, queries.reshape(rows, -1), fragment_tol)
    found = found.reshape(rows, length, count, kinds)

    remaining = residues_total.unsqueeze(2) - q  # mass left after the candidate
    completes = torch.exp(-0.5 * (remaining / precursor_tol) ** 2)
    impossible = ((remaining < -0.5) | ((remaining > 0.5) & (remaining < MIN_RESIDUE - 0.5))).float()
    per_candidate = torch.cat([found, completes.unsqueeze(-1), impossible.unsqueeze(-1)], dim=-1)

    left = residues_total - prefix  # (B, L): residue mass still to place from position i on
    done = torch.exp(-0.5 * (left / precursor_tol) ** 2)
    prefix_b = peak_intensity(batch.mz, batch.intensity, prefix + PROTON, fragment_tol)
    prefix_y = peak_intensity(batch.mz, batch.intensity, neutral - prefix + PROTON, fragment_tol)
    position = torch.arange(length, device=device, dtype=torch.float32).expand(rows, length)
    charge = batch.precursor_charge.to(device).clamp(1, MAX_CHARGE_FEATURE) - 1
    charge_hot = torch.nn.functional.one_hot(charge, MAX_CHARGE_FEATURE).float()
    per_position = torch.cat(
        [
            torch.stack(
                [done, prefix_b * (position > 0), prefix_y, prefix / 1000.0, left / 1000.0, position / 32.0],
                dim=-1,
            ),
            charge_hot.unsqueeze(1).expand(rows, length, MAX_CHARGE_FEATURE),
        ],
        dim=-1,
    )
    x = torch.cat([per_candidate.reshape(rows, length, -1), per_position], dim=-1)

    support = found.sum(dim=-1) + completes  # (B, L, C)
    support = support * (1.0 - impossible)
    evidence = torch.cat([done.unsqueeze(-1) * 2.0, support], dim=-1)
    return Features(x=x, evidence=evidence)
