"""Mass-aligned amino-acid and peptide metrics on hand-made cases."""

from __future__ import annotations

import pytest

from trm_cluster.workloads.trm.evaluate import match_residues, sequence_metrics


def test_exact_match() -> None:
    target = list("PEPTLDE")
    assert match_residues(target, target) == 7
    assert sequence_metrics([target], [target]) == {
        "aa_precision": 1.0,
        "aa_recall": 1.0,
        "peptide_recall": 1.0,
    }


def test_one_substitution() -> None:
    # S (87.03) for V (99.07): cumulative masses part after G, A and never align again.
    assert match_residues(list("GASP"), list("GAVP")) == 2
    # K for Q differs by 0.036 Da: judged equal by mass.
    assert match_residues(list("GAKP"), list("GAQP")) == 4
    # E for K differs by 0.95 Da: the cumulative masses stop aligning.
    assert match_residues(list("GAEP"), list("GAKP")) == 2
    metrics = sequence_metrics([list("GASP")], [list("GAVP")])
    assert metrics["aa_precision"] == pytest.approx(0.5)
    assert metrics["aa_recall"] == pytest.approx(0.5)
    assert metrics["peptide_recall"] == 0.0


def test_shifted_sequence() -> None:
    # An extra residue in front shifts every cumulative mass: nothing aligns.
    assert match_residues(list("AGASP"), list("GASP")) == 0
    # Swapping the first two residues: the prefix G+A = A+G realigns at the second position
    # (cumulative mass agrees, residue mass does not), then S and P match.
    assert match_residues(list("AGSP"), list("GASP")) == 2
    # GG has the mass of N: the cumulative masses realign after it.
    assert match_residues(list("GGAS"), list("NAS")) == 2
    metrics = sequence_metrics([list("AGASP"), list("GASP")], [list("GASP"), list("GASP")])
    assert metrics["aa_precision"] == pytest.approx(4 / 9)
    assert metrics["aa_recall"] == pytest.approx(4 / 8)
    assert metrics["peptide_recall"] == pytest.approx(0.5)


def test_empty_prediction() -> None:
    metrics = sequence_metrics([[]], [list("GAS")])
    assert metrics == {"aa_precision": 0.0, "aa_recall": 0.0, "peptide_recall": 0.0}
