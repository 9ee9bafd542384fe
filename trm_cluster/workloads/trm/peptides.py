"""Peptide physics without tensors: residue masses, the output vocabulary, fragment ions, sequence
parsing, and how a curriculum stage draws its spectra (``DataSettings``).

Apart from ``spectra.py`` (the tensors) so that the workload's config, which names ``DataSettings``, and
``submit``, which only reads that config, never import torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

PROTON = 1.00727646677
H2O = 18.0105646837
NH3 = 17.02654910101
CO = 27.99491461956
OXIDATION = 15.994915

RESIDUE_MASSES: dict[str, float] = {
    "G": 57.021464,
    "A": 71.037114,
    "S": 87.032028,
    "P": 97.052764,
    "V": 99.068414,
    "T": 101.047678,
    "C": 103.009185,
    "C[Carbamidomethyl]": 160.030649,
    "L": 113.084064,
    "N": 114.042927,
    "D": 115.026943,
    "Q": 128.058578,
    "K": 128.094963,
    "E": 129.042593,
    "M": 131.040485,
    "M[Oxidation]": 131.040485 + OXIDATION,
    "H": 137.058912,
    "F": 147.068414,
    "R": 156.101111,
    "Y": 163.063329,
    "W": 186.079313,
}
"""Monoisotopic residue masses (Da). I has L's mass and is written as L."""

END = "<end>"
VOCAB: tuple[str, ...] = (END, *RESIDUE_MASSES)
"""Output tokens: index 0 ends (and pads) a sequence, the rest are residues."""
END_INDEX = 0
TOKEN_INDEX: dict[str, int] = {token: index for index, token in enumerate(VOCAB)}
ALIASES: dict[str, str] = {"I": "L", "C[+57.021]": "C[Carbamidomethyl]", "M[+15.995]": "M[Oxidation]"}


def residue_sum(residues: Sequence[str]) -> float:
    return math.fsum(RESIDUE_MASSES[r] for r in residues)


def peptide_mass(residues: Sequence[str]) -> float:
    """Neutral monoisotopic mass M = sum of residues + H2O."""
    return residue_sum(residues) + H2O


def precursor_mz(residues: Sequence[str], charge: int) -> float:
    return (peptide_mass(residues) + charge * PROTON) / charge


def neutral_mass(mz: float, charge: int) -> float:
    """Neutral peptide mass from a precursor m/z and charge."""
    return mz * charge - charge * PROTON


def b_ions(residues: Sequence[str], charge: int = 1) -> list[float]:
    """b_1 .. b_(L-1) at the given charge."""
    prefix = 0.0
    out: list[float] = []
    for residue in residues[:-1]:
        prefix += RESIDUE_MASSES[residue]
        out.append((prefix + charge * PROTON) / charge)
    return out


def y_ions(residues: Sequence[str], charge: int = 1) -> list[float]:
    """y_1 .. y_(L-1) at the given charge (y_k holds the last k residues)."""
    total = peptide_mass(residues)
    prefix = 0.0
    by_prefix: list[float] = []
    for residue in residues[:-1]:
        prefix += RESIDUE_MASSES[residue]
        by_prefix.append((total - prefix + charge * PROTON) / charge)
    return by_prefix[::-1]


class UnknownResidueError(ValueError):
    """A sequence holds a residue or modification the vocabulary lacks."""


_TOKEN_RE = re.compile(r"[A-Z](?:\[[^\]]*\])?|\[[^\]]*\]-?")


def parse_sequence(text: str) -> tuple[str, ...]:
    """Split ``C[Carbamidomethyl]GHK`` into vocabulary tokens, mapping I to L."""
    pieces = _TOKEN_RE.findall(text)
    if "".join(pieces) != text:
        raise UnknownResidueError(f"cannot parse sequence {text!r}")
    tokens: list[str] = []
    for piece in pieces:
        token = ALIASES.get(piece, piece)
        if token not in RESIDUE_MASSES:
            raise UnknownResidueError(f"residue {piece!r} in {text!r} is not in the vocabulary")
        tokens.append(token)
    return tuple(tokens)


@dataclass(frozen=True)
class DataSettings:
    """How synthetic spectra are drawn (one curriculum stage's data part)."""

    alphabet: tuple[str, ...]
    min_length: int
    max_length: int
    noise_peaks: int = 0
    """Mean number of random noise peaks per spectrum."""
    dropout: float = 0.0
    """Probability that a fragment peak is missing."""
    ppm: float = 0.0
    """Standard deviation of the m/z error of every peak and of the precursor, in ppm."""
    fragment_charges: tuple[int, ...] = (1,)
    precursor_charges: tuple[int, ...] = (2,)

    def validate(self, max_length: int) -> None:
        unknown = [token for token in self.alphabet if token not in RESIDUE_MASSES]
        if unknown or not self.alphabet:
            raise ValueError(f"alphabet {self.alphabet!r} has unknown residues {unknown}")
        if not 1 <= self.min_length <= self.max_length <= max_length:
            raise ValueError(
                f"lengths {self.min_length}..{self.max_length} must fit in max_length {max_length}"
            )
        if not set(self.fragment_charges) <= {1, 2} or 1 not in self.fragment_charges:
            raise ValueError(f"fragment_charges must be (1,) or (1, 2), got {self.fragment_charges}")


def tokens_to_residues(row: Sequence[int]) -> list[str]:
    """Residues of one output row, up to the first end token."""
    out: list[str] = []
    for index in row:
        if index == END_INDEX:
            break
        out.append(VOCAB[index])
    return out
