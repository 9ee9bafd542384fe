#!/usr/bin/env bash
# Every check, from a fresh clone: set up the venv (CPU torch), lint, type-check, start a real
# single-node Slurm on localhost, and run the whole test suite against it. Extra args go to pytest.
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
python -m pytest "$@"
