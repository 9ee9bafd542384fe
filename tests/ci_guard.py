"""A test that needs Slurm or a data file skips on a workstation, and fails under ``CI=true``.

A pytest plugin (``pytest_plugins`` in tests/conftest.py), not conftest code, so that
tests/test_ci_guard.py runs this very module in an inner pytest session.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

SLURM_HINT = 'start one with scripts/slurm-local.sh start, then eval "$(scripts/slurm-local.sh env)"'
_SLURM_WORKS = pytest.StashKey[bool]()


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def missing(reason: str) -> NoReturn:
    """Skip for want of ``reason``; under CI=true a missing component fails the test instead."""
    if in_ci():
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def data_file(path: Path) -> Path:
    """``path``, when it is a file; otherwise skip, or fail under CI=true."""
    if not path.is_file():
        missing(f"{path} is not available")
    return path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slurm: needs a working sbatch (a real Slurm); fails instead of skipping when CI=true"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture of a Slurm test runs: ask the controller once per session."""
    if item.get_closest_marker("slurm") is None:
        return
    if _SLURM_WORKS not in item.config.stash:
        from trm_cluster.scheduler.executors import slurm_available

        item.config.stash[_SLURM_WORKS] = slurm_available()
    if not item.config.stash[_SLURM_WORKS]:
        missing(f"no working Slurm (sbatch/sinfo missing, or sinfo -h fails): {SLURM_HINT}")
