"""The CI guard (tests/ci_guard.py), run in an inner pytest session under the real tests/conftest.py.

A Slurm test or a missing data file skips on a workstation, but under CI=true it must fail: a skip there
would pass CI with the component never tested.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

INNER = """
import pytest
from ci_guard import data_file


@pytest.mark.slurm
def test_on_slurm():
    assert True


@pytest.fixture
def absent(tmp_path):
    return data_file(tmp_path / "absent.mgf")


def test_with_data(absent):
    assert True
"""


def slurm_commands(directory: Path, sinfo_exit: int | None) -> str:
    """A PATH holding nothing but an sbatch and an sinfo that exits with ``sinfo_exit`` (None: neither)."""
    directory.mkdir()
    if sinfo_exit is not None:
        for name, code in (("sbatch", 0), ("sinfo", sinfo_exit)):
            (directory / name).write_text(f"#!/bin/sh\nexit {code}\n")
            (directory / name).chmod(0o755)
    return str(directory)


SLURM_FAILS = "ERROR *::test_on_slurm - Failed: CI=true but no working Slurm*"
SLURM_SKIPS = "SKIPPED *no working Slurm*scripts/slurm-local.sh start*"
SLURM_RUNS = "PASSED *::test_on_slurm"
DATA_FAILS = "ERROR *::test_with_data - Failed: CI=true but *absent.mgf is not available"
DATA_SKIPS = "SKIPPED *absent.mgf is not available"


@pytest.mark.parametrize(
    ("ci", "sinfo_exit", "expected"),
    [
        (True, None, [SLURM_FAILS, DATA_FAILS]),  # no sbatch/sinfo at all
        (True, 1, [SLURM_FAILS, DATA_FAILS]),  # installed, but no controller answers
        (True, 0, [SLURM_RUNS, DATA_FAILS]),
        (False, None, [SLURM_SKIPS, DATA_SKIPS]),
        (False, 0, [SLURM_RUNS, DATA_SKIPS]),
    ],
)
def test_a_missing_component_skips_outside_ci_and_fails_in_ci(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    ci: bool,
    sinfo_exit: int | None,
    expected: list[str],
) -> None:
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(INNER)
    monkeypatch.setenv("PATH", slurm_commands(pytester.path / "bin", sinfo_exit))
    if ci:
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.delenv("CI", raising=False)
    result = pytester.runpytest("-rA", "-p", "no:cacheprovider")
    for line in expected:  # the summary's order is pytest's business
        result.stdout.fnmatch_lines([line])
    outcomes = [line.split()[0] for line in expected]
    result.assert_outcomes(
        passed=outcomes.count("PASSED"), skipped=outcomes.count("SKIPPED"), errors=outcomes.count("ERROR")
    )
