"""Fragment physics, synthetic batches and the MGF reader."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trm_cluster.workloads.trm.curriculum import CurriculumConfig, build_curriculum
from trm_cluster.workloads.trm.peptides import (
    H2O,
    PROTON,
    RESIDUE_MASSES,
    UnknownResidueError,
    b_ions,
    neutral_mass,
    parse_sequence,
    peptide_mass,
    precursor_mz,
    tokens_to_residues,
    y_ions,
)
from trm_cluster.workloads.trm.spectra import generate_batch, read_mgf, step_generator


def test_masses_by_hand() -> None:
    # PEPTIDE: 2 P + 2 E + T + I + D + water; literature value 799.3600 Da.
    by_hand = 2 * 97.052764 + 2 * 129.042593 + 101.047678 + 113.084064 + 115.026943 + 18.0105646837
    assert peptide_mass(parse_sequence("PEPTIDE")) == pytest.approx(by_hand, abs=1e-9)
    assert peptide_mass(parse_sequence("PEPTIDE")) == pytest.approx(799.3600, abs=1e-4)
    assert RESIDUE_MASSES["C[Carbamidomethyl]"] == pytest.approx(103.009185 + 57.021464, abs=1e-6)
    assert RESIDUE_MASSES["M[Oxidation]"] == pytest.approx(147.0354, abs=1e-6)
    ga = 57.021464 + 71.037114 + H2O
    assert precursor_mz(["G", "A"], 1) == pytest.approx(ga + 1.00727646677, abs=1e-9)
    assert precursor_mz(["G", "A"], 2) == pytest.approx((ga + 2 * 1.00727646677) / 2, abs=1e-9)
    assert neutral_mass(precursor_mz(["G", "A"], 3), 3) == pytest.approx(ga, abs=1e-9)


def test_b_and_y_ions_by_hand() -> None:
    residues = ["G", "A", "S"]
    assert b_ions(residues) == pytest.approx([57.021464 + PROTON, 57.021464 + 71.037114 + PROTON])
    assert y_ions(residues) == pytest.approx([87.032028 + H2O + PROTON, 71.037114 + 87.032028 + H2O + PROTON])
    assert b_ions(residues, charge=2)[0] == pytest.approx((57.021464 + 2 * PROTON) / 2)


@pytest.mark.parametrize("sequence", ["PEPTIDE", "C[Carbamidomethyl]GHTNNLRPK", "GASPVTM[Oxidation]W"])
def test_b_y_complementarity(sequence: str) -> None:
    residues = parse_sequence(sequence)
    total = peptide_mass(residues)
    b, y = b_ions(residues), y_ions(residues)
    length = len(residues)
    for k in range(1, length):
        # b_k + y_(L-k) = M + 2p at charge 1
        assert b[k - 1] + y[length - k - 1] == pytest.approx(total + 2 * PROTON, abs=1e-9)


def test_parse_sequence() -> None:
    assert parse_sequence("IAHYNKR") == ("L", "A", "H", "Y", "N", "K", "R")
    assert parse_sequence("C[Carbamidomethyl]GK") == ("C[Carbamidomethyl]", "G", "K")
    with pytest.raises(UnknownResidueError):
        parse_sequence("TN[Deamidated]GK")
    with pytest.raises(UnknownResidueError):
        parse_sequence("GAB")


def _batch(step: int, seed: int = 7) -> dict[str, torch.Tensor]:
    stage = build_curriculum(CurriculumConfig(name="default", horizon=100)).final.data
    return generate_batch(stage, 32, 9, 64, step_generator(seed, step)).state_dict()


def test_batch_is_a_pure_function_of_seed_and_step() -> None:
    torch.manual_seed(1)
    first = _batch(3)
    torch.manual_seed(2)  # the global RNG must not matter
    again = _batch(3)
    for key in first:
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(first["tokens"], _batch(4)["tokens"])
    assert not torch.equal(first["mz"], _batch(4)["mz"])
    assert not torch.equal(first["tokens"], _batch(3, seed=8)["tokens"])


def test_synthetic_spectrum_holds_the_fragments() -> None:
    clean = build_curriculum(CurriculumConfig(name="easy")).final.data
    batch = generate_batch(clean, 8, 9, 64, step_generator(0, 0))
    for row in range(8):
        residues = tokens_to_residues(batch.tokens[row].tolist())
        assert len(residues) == int(batch.lengths[row])
        assert float(batch.precursor_mass[row]) == pytest.approx(peptide_mass(residues), abs=1e-3)
        peaks = batch.mz[row][batch.intensity[row] > 0].tolist()
        for ion in b_ions(residues) + y_ions(residues):
            if ion >= 50:
                assert min(abs(ion - p) for p in peaks) < 1e-3
        assert max(batch.intensity[row].tolist()) == pytest.approx(1.0)
        assert batch.mz[row].tolist() == sorted(batch.mz[row].tolist())


def test_read_mgf_real_file(mgf_path: Path) -> None:
    spectra = read_mgf(mgf_path)
    assert len(spectra) == 128
    assert spectra[0].sequence == ("L", "A", "H", "Y", "N", "K", "R")
    assert spectra[0].precursor_mz == pytest.approx(451.25348)
    assert spectra[0].charge == 2
    assert spectra[2].sequence[0] == "C[Carbamidomethyl]"
    assert all(len(s.mz) == len(s.intensity) > 0 for s in spectra)
    skipped = [s for s in spectra if not s.supported]
    assert len(skipped) == 2  # two deamidated asparagines
    assert all("Deamidated" in s.problem for s in skipped)
    usable = [s for s in spectra if s.supported]
    assert any("M[Oxidation]" in s.sequence for s in usable)
    # Our residue masses reproduce every labelled precursor mass.
    for spectrum in usable:
        assert math.isclose(spectrum.neutral_mass, peptide_mass(spectrum.sequence), abs_tol=0.02)
