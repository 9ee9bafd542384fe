"""Fixtures and hooks only; the shared helpers are in support.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One intra-op thread in every process the tests start (jobs, ranks, Slurm's, which inherit the
# environment): two workers already keep both cores busy, and torch's default (one thread per core) made
# each process spin on the other's core. On the TRM tests it cost 20-30% more CPU for the same wall time
# run alone. Every run a test compares has the same setting, so exactness is untouched.
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["pytester", "ci_guard"]  # ci_guard: Slurm tests and data files skip, or fail under CI=true

LONGEST_FIRST = (
    "scheduler/test_slurm.py", "scheduler/test_resume_local.py", "state/test_sharded.py",
    "launch/test_submit_cli.py", "runtime/test_distributed.py", "runtime/test_hangs.py", "test_benchmarks.py",
    "workloads/trm/test_trm_jobs.py", "scheduler/test_slurm_nodes.py", "runtime/test_own_loop.py",
)  # fmt: skip
"""The test files that take longest (CI's timings, 2026-12-06), started first: two workers take whole files
(``-n 2 --dist loadfile``), and a long file started last leaves the other worker idle at the end."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of LONGEST_FIRST first, in that order; the others after them, in collection order."""
    first = {f"tests/{name}": i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.nodeid.split("::")[0], len(first)))


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
