"""Evaluate a peptide-trm checkpoint: ``python -m trm_cluster.workloads.trm.evaluate --checkpoint PATH [--mgf FILE]``.

Loads the checkpoint with ``weights_only=True``, rebuilds the model from ``meta.config.job``, uses
the EMA weights from the trainer state (unless ``--raw-weights``) and runs all N_sup supervision
steps. Metrics (in :mod:`trm_cluster.workloads.trm.metrics`): amino-acid precision/recall and peptide recall
with mass-aligned matching.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trm_cluster.core.workload import dataclass_from_dict
from trm_cluster.workloads.trm.config import TRMConfig
from trm_cluster.workloads.trm.metrics import (
    batch_metrics,
    evaluation_set,
    match_residues,
    predict,
    sequence_metrics,
)
from trm_cluster.workloads.trm.model import TinyRecursiveModel, build_model
from trm_cluster.workloads.trm.peptides import tokens_to_residues
from trm_cluster.workloads.trm.spectra import batch_from_spectra, read_mgf

__all__ = [
    "EvaluateArgs",
    "batch_metrics",
    "evaluate_checkpoint",
    "evaluation_set",
    "main",
    "match_residues",
    "predict",
    "sequence_metrics",
]


@dataclass
class EvaluateArgs:
    """Evaluate a peptide-trm checkpoint on an MGF file (or on its synthetic evaluation set)."""

    checkpoint: Path
    """Checkpoint dict with "model", "trainer" and "meta" (meta.config.job is the TRMConfig)."""
    mgf: Path | None = None
    """Labelled MGF file (SEQ= lines). Without it: the config's synthetic evaluation set."""
    max_length: int | None = None
    """Output positions (default: enough for the longest labelled peptide, at least the config's)."""
    max_peaks: int = 150
    """Most intense peaks kept per real spectrum."""
    fragment_tol: float | None = None
    """Fragment match width in Da (default: the config's)."""
    raw_weights: bool = False
    """Use the raw weights instead of the EMA weights."""
    show: int = 5
    """Print this many predictions next to their targets."""
    device: str = "cpu"


def config_from_checkpoint(checkpoint: Mapping[str, Any]) -> TRMConfig:
    meta = checkpoint.get("meta", {})
    job = meta.get("config", {}).get("job")
    if not isinstance(job, Mapping):
        raise ValueError("checkpoint has no meta.config.job (the TRMConfig as a dict)")
    return dataclass_from_dict(TRMConfig, job)


def model_from_checkpoint(
    checkpoint: Mapping[str, Any], config: TRMConfig, raw_weights: bool = False
) -> TinyRecursiveModel:
    model = build_model(config)
    trainer_state = checkpoint.get("trainer", {})
    weights = checkpoint["model"]
    if not raw_weights and isinstance(trainer_state, Mapping) and "ema" in trainer_state:
        weights = trainer_state["ema"]
    model.load_state_dict(weights)
    return model


def evaluate_checkpoint(args: EvaluateArgs) -> dict[str, float]:
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    config = config_from_checkpoint(checkpoint)
    model = model_from_checkpoint(checkpoint, config, args.raw_weights).to(torch.device(args.device))
    tol = config.fragment_tol if args.fragment_tol is None else args.fragment_tol
    extra: dict[str, float] = {}
    if args.mgf is None:
        batch = evaluation_set(config)
        length = config.max_length if args.max_length is None else args.max_length
    else:
        spectra = read_mgf(args.mgf)
        usable = [s for s in spectra if s.supported]
        extra = {"spectra_read": float(len(spectra)), "spectra_skipped": float(len(spectra) - len(usable))}
        for spectrum in spectra:
            if not spectrum.supported:
                print(f"skipped {spectrum.title!r}: {spectrum.problem}")
        if not usable:
            raise SystemExit("no usable labelled spectra in the MGF file")
        longest = max(len(s.sequence) for s in usable)
        length = args.max_length or max(config.max_length, longest + 1)
        batch = batch_from_spectra(usable, length, args.max_peaks)
    tokens = predict(model, batch, config.n_sup, tol, config.precursor_tol, length)
    predictions = [tokens_to_residues(row) for row in tokens.tolist()]
    targets = [tokens_to_residues(row) for row in batch.tokens.tolist()]
    for predicted, target in list(zip(predictions, targets, strict=True))[: args.show]:
        print(f"target {''.join(_short(target)):<26} predicted {''.join(_short(predicted))}")
    metrics = sequence_metrics(predictions, targets)
    metrics.update(extra)
    metrics["spectra"] = float(len(targets))
    return metrics


def _short(residues: Sequence[str]) -> list[str]:
    return ["c" if r == "C[Carbamidomethyl]" else "m" if r == "M[Oxidation]" else r for r in residues]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``trm-evaluate`` / ``python -m trm_cluster.workloads.trm.evaluate``."""
    import tyro

    args = tyro.cli(EvaluateArgs, args=argv)
    metrics = evaluate_checkpoint(args)
    for name, value in metrics.items():
        print(f"{name:>16}: {value:.4f}" if not name.startswith("spectra") else f"{name:>16}: {value:.0f}")


if __name__ == "__main__":
    main()
