"""Losses of one supervision step: sequence CE, halting BCE, spectrum matching, precursor mass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from trm_cluster.workloads.trm.peptides import H2O
from trm_cluster.workloads.trm.spectra import mass_table


@dataclass(frozen=True)
class LossParts:
    total: Tensor
    ce: Tensor
    halt: Tensor
    spectrum: Tensor
    precursor: Tensor
    correct: Tensor  # (B,) bool: whole sequence right


def spectrum_matching_loss(logits: Tensor, evidence: Tensor) -> Tensor:
    """How much of the spectrum's best explanation the predicted fragments capture.

    ``evidence`` (B, L, V) is the matched intensity of the b/y ions each token would produce at
    each position (from the features of the current answer). Normalised per position to [0, 1],
    the loss is -log of the expected normalised evidence under the predicted distribution, over
    positions where the spectrum supports anything at all. Needs no labels.
    """
    best = evidence.amax(dim=-1, keepdim=True)
    score = evidence / best.clamp(min=1e-6)
    expected = (logits.float().softmax(dim=-1) * score).sum(dim=-1)
    informative = (best.squeeze(-1) > 0.05).float()
    per_position = -torch.log(expected.clamp(min=1e-3))
    return (per_position * informative).sum() / informative.sum().clamp(min=1.0)


def precursor_mass_loss(logits: Tensor, precursor_mass: Tensor) -> Tensor:
    """Huber loss between the expected total residue mass and the precursor's, in glycine units."""
    masses = mass_table(logits.device)
    expected = (logits.float().softmax(dim=-1) * masses).sum(dim=(1, 2))
    target = precursor_mass.to(logits.device) - H2O
    return F.huber_loss(expected / 57.021464, target / 57.021464, delta=1.0)


def supervision_loss(
    logits: Tensor,
    q: Tensor,
    targets: Tensor,
    evidence: Tensor,
    precursor_mass: Tensor,
    halt_weight: float,
    spectrum_weight: float,
    precursor_weight: float,
) -> LossParts:
    vocab = logits.shape[-1]
    ce = F.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1))
    correct = (logits.argmax(dim=-1) == targets).all(dim=1)
    halt = F.binary_cross_entropy_with_logits(q.float(), correct.float())
    # Both auxiliaries are cheap, so they are always computed (and logged), weighted or not.
    spectrum = spectrum_matching_loss(logits, evidence)
    precursor = precursor_mass_loss(logits, precursor_mass)
    total = ce + halt_weight * halt + spectrum_weight * spectrum + precursor_weight * precursor
    return LossParts(total=total, ce=ce, halt=halt, spectrum=spectrum, precursor=precursor, correct=correct)
