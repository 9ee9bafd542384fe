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
