#!/usr/bin/env bash
# Every check, from a fresh clone: set up the venv (CPU torch), lint, type-check, start a real
# single-node Slurm on localhost, and run the whole test suite against it (two files at a time).
# Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check torch==2.13.0 -e '.[dev]'

ruff check .
ruff format --check .
mypy

scripts/slurm-local.sh start
eval "$(scripts/slurm-local.sh env)"
# two workers, one test file each at a time (a file's module fixtures are built once; every Slurm test is
# in tests/scheduler/test_slurm.py, so they run one after another on the one test node)
python -m pytest -n 2 --dist loadfile --durations=30 "$@"
