"""Fixtures of the peptide-trm tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from trm_testing import MGF


@pytest.fixture
def mgf_path() -> Path:
    if not MGF.is_file():
        pytest.skip(f"{MGF} is not available")
    return MGF
