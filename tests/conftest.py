"""Fixtures and hooks only; the shared helpers are in support.py."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester", "ci_guard"]  # ci_guard: Slurm tests and data files skip, or fail under CI=true


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch working directory for CLI runs (runs/ lands here)."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def mgf_path() -> Path:
    """The real MGF file of the peptide-trm tests: skipped without it, a failure under CI=true."""
    # not at the top: imported before pytest loads it as a plugin, ci_guard would lose its assert rewriting;
    # and trm_testing imports the TRM workload, which only the tests asking for the file need
    from ci_guard import data_file
    from trm_testing import MGF

    return data_file(MGF)
