#!/usr/bin/env bash
# Every check, from a fresh clone: set up the venv (CPU torch), lint, type-check, start a real
# single-node Slurm on localhost, and run the whole test suite against it (two files at a time).
# Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# finish PID LOG: wait for a step started in the background, print its output; its exit status
finish() {
    local code=0
    wait "$1" || code=$?
    cat "$2"
    rm -f "$2"
    return "$code"
}

# the test cluster starts beside the venv's set-up: neither needs the other
slurm_log=$(mktemp)
scripts/slurm-local.sh start > "$slurm_log" 2>&1 &
slurm_pid=$!

python3 -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check torch==2.13.0 -e '.[dev]'

echo "set-up: ${SECONDS} s"

ruff check .
ruff format --check .
# mypy beside the tests' start (its 15 s of CPU where the tests wait on processes); its verdict counts
mypy_log=$(mktemp)
mypy > "$mypy_log" 2>&1 &
mypy_pid=$!

finish "$slurm_pid" "$slurm_log"
echo "test cluster up: ${SECONDS} s"
eval "$(scripts/slurm-local.sh env)"
# two workers, one test file each at a time (a file's module fixtures are built once; the Slurm tests of
# the test node are all in tests/scheduler/test_slurm.py, so they run one after another on it)
tests=0
python -m pytest -n 2 --dist loadfile --durations=30 "$@" || tests=$?
echo "tests done: ${SECONDS} s since the start"
typed=0
finish "$mypy_pid" "$mypy_log" || typed=$?
[ "$tests" -ne 0 ] && exit "$tests"
exit "$typed"
