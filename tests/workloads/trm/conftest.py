"""Fixtures of the peptide-trm tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from ci_guard import data_file
from trm_testing import MGF


@pytest.fixture
def mgf_path() -> Path:
    """The real MGF file: skipped without it, a failure under CI=true."""
    return data_file(MGF)
