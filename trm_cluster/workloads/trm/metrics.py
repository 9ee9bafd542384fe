"""Evaluation machinery: mass-aligned metrics, inference with all N_sup steps, the synthetic set.

A predicted residue counts as correct when its cumulative (prefix) mass lines up with the
target's within 0.5 Da and its own mass matches within 0.1 Da, so isobaric swaps (I/L, K/Q) and
equal-mass rearrangements are judged by mass, as is usual for de novo sequencing. Kept apart from
the CLI module so that importing the package does not import ``trm_cluster.workloads.trm.evaluate``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from trm_cluster.workloads.trm.config import TRMConfig
from trm_cluster.workloads.trm.curriculum import build_curriculum
from trm_cluster.workloads.trm.features import spectrum_features
from trm_cluster.workloads.trm.model import TinyRecursiveModel
from trm_cluster.workloads.trm.peptides import RESIDUE_MASSES, tokens_to_residues
from trm_cluster.workloads.trm.spectra import SpectrumBatch, generate_batch, step_generator

EVAL_STREAM = 2
CUM_MASS_TOL = 0.5
RESIDUE_MASS_TOL = 0.1


def match_residues(
    predicted: Sequence[str],
    target: Sequence[str],
    cum_tol: float = CUM_MASS_TOL,
    residue_tol: float = RESIDUE_MASS_TOL,
) -> int:
    """Number of predicted residues that align with the target by cumulative and residue mass."""
    i = j = 0
    cum_pred = cum_true = 0.0
    matches = 0
    while i < len(predicted) and j < len(target):
        mass_pred = RESIDUE_MASSES[predicted[i]]
        mass_true = RESIDUE_MASSES[target[j]]
        next_pred, next_true = cum_pred + mass_pred, cum_true + mass_true
        if abs(next_pred - next_true) < cum_tol:
            if abs(mass_pred - mass_true) < residue_tol:
                matches += 1
            cum_pred, cum_true = next_pred, next_true
            i += 1
            j += 1
        elif next_pred < next_true:
            cum_pred = next_pred
            i += 1
        else:
            cum_true = next_true
            j += 1
    return matches


def sequence_metrics(
    predictions: Sequence[Sequence[str]], targets: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Amino-acid precision/recall and peptide recall over paired predictions and targets."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    matched = predicted_total = target_total = whole = 0
    for predicted, target in zip(predictions, targets, strict=True):
        count = match_residues(predicted, target)
        matched += count
        predicted_total += len(predicted)
        target_total += len(target)
        whole += int(count == len(target) == len(predicted))
    return {
        "aa_precision": matched / max(1, predicted_total),
        "aa_recall": matched / max(1, target_total),
        "peptide_recall": whole / max(1, len(targets)),
    }


@torch.no_grad()
def predict(
    model: TinyRecursiveModel,
    batch: SpectrumBatch,
    n_sup: int,
    fragment_tol: float,
    precursor_tol: float,
    max_length: int,
    batch_size: int = 256,
    autocast: bool = False,
) -> Tensor:
    """Token ids (N, max_length) after all ``n_sup`` supervision steps (no early halting)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs: list[Tensor] = []
    for start in range(0, len(batch), batch_size):
        rows = batch.rows(slice(start, start + batch_size)).to(device)

        def featurize(tokens: Tensor, rows: SpectrumBatch = rows) -> Tensor:
            return spectrum_features(tokens, rows, fragment_tol, precursor_tol).x

        y, z = model.initial_state(len(rows), max_length)
        logits = model.head(y)
        for _ in range(n_sup):
            y, z, logits, _, _ = model.supervision_step(y, z, featurize, autocast=autocast)
        outputs.append(logits.argmax(dim=-1).cpu())
    model.train(was_training)
    return torch.cat(outputs)


def batch_metrics(tokens: Tensor, batch: SpectrumBatch) -> dict[str, float]:
    """Metrics of predicted token ids against a batch's targets."""
    predictions = [tokens_to_residues(row) for row in tokens.tolist()]
    targets = [tokens_to_residues(row) for row in batch.tokens.tolist()]
    return sequence_metrics(predictions, targets)


def evaluation_set(config: TRMConfig) -> SpectrumBatch:
    """The fixed synthetic evaluation set: ``eval_size`` spectra of the curriculum's last stage."""
    final = build_curriculum(config.curriculum).final.data
    generator = step_generator(config.eval_seed, 0, stream=EVAL_STREAM)
    return generate_batch(final, config.eval_size, config.max_length, config.max_peaks, generator)
