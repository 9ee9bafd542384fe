#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the core modules against the fast unit tests; not run in CI.
#
#   scripts/mutation.sh                          every module and test named in [tool.mutmut] (pyproject.toml)
#   scripts/mutation.sh 'trm_cluster.rundir.atomic*'    only these mutants (mutmut's name globs)
#   scripts/mutation.sh --survivors              only the mutants the last run left alive (after adding tests)
#   scripts/mutation.sh --scores                 the score per module of what has run so far, and the survivors
#
# mutmut works in a copy of the tree ($MUTATION_DIR, default ${TMPDIR:-/tmp}/trm-cluster-mutation), so the
# checkout never gets a mutants/ folder and edits made meanwhile do not race the run. A rerun continues
# where the last one stopped and retests only what changed. One mutant's diff:
#   cd "$MUTATION_DIR" && mutmut show trm_cluster.rundir.atomic.x_fsync_directory__mutmut_3
# docs/testing.md: what the scores were, and why each survivor is left.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${MUTATION_DIR:-${TMPDIR:-/tmp}/trm-cluster-mutation}"
command -v mutmut >/dev/null || { echo "mutmut not found: pip install -e '.[dev]'" >&2; exit 2; }

mkdir -p "$work/mutants"  # before python starts: a missing PYTHONPATH entry is never searched later
rsync -a --delete --exclude .git/ --exclude .venv/ --exclude mutants/ --exclude __pycache__/ \
  --exclude /runs/ --exclude /wandb/ "$repo/" "$work/"
cd "$work"
# the processes a test starts (spawned manifest writers, a fake wandb-core) import the mutated code too
export PYTHONPATH="$work/mutants${PYTHONPATH:+:$PYTHONPATH}"

args=("$@")
if [[ "${1:-}" == --survivors ]]; then  # mutmut reruns every mutant it is given by name (or glob)
  mapfile -t args < <(grep -v -e ': killed$' -e ': timeout$' -e ': caught by type check$' -e ': not checked$' \
    mutants/results.txt | sed 's/^ *//; s/: [^:]*$//')
  [[ ${#args[@]} -gt 0 ]] || { echo "no survivors in mutants/results.txt" >&2; exit 0; }
fi
if [[ "${1:-}" != --scores ]]; then
  start=$SECONDS
  status=0
  mutmut run "${args[@]}" >mutants/run.log 2>&1 || status=$?
  # mutmut redraws its progress line with \r: keep the lines that say something
  tr '\r' '\n' <mutants/run.log | grep -v -e '^ *$' -e '^[^ ]* *Generating mutants' -e '^[^ ]* *Running stats' \
    -e '^[^ ]* *Running clean tests' -e '^[^ ]* *Running forced fail test' -e '^[^ ]* [0-9]*/[0-9]* ' \
    | tail -n 8 || true
  echo "mutmut run: $((SECONDS - start)) s, exit status $status (whole output: $work/mutants/run.log)"
  if [[ $status -ne 0 ]]; then  # e.g. a fast test failed unmutated ("failed to collect stats"): nothing was tested
    tr '\r' '\n' <mutants/run.log | grep -v -e '^ *$' -e '^[^ ]* *Running ' | tail -n 40 >&2
    echo "mutmut failed (exit status $status); see above" >&2
    exit "$status"
  fi
fi

mutmut results --all true >mutants/results.txt
python3 - mutants/results.txt <<'PY'
import collections, sys

KILLED = {"killed", "timeout", "caught by type check"}
counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
left = []
for line in open(sys.argv[1]):
    name, _, status = line.strip().rpartition(": ")
    if name:
        counts[".".join(name.split(".")[:2])][status] += 1
        if status not in KILLED | {"not checked"}:
            left.append(f"  {status:12} {name}")
print(f"{'module':26} {'killed':>6} {'left':>5} {'score':>6}")
for module, c in sorted(counts.items()):
    killed = sum(c[s] for s in KILLED)
    checked = sum(c.values()) - c["not checked"]
    score = f"{100 * killed / checked:.0f}%" if checked else "-"
    unchecked = f"  ({c['not checked']} not checked yet)" if c["not checked"] else ""
    print(f"{module:26} {killed:6} {checked - killed:5} {score:>6}{unchecked}")
unchecked = sum(c["not checked"] for c in counts.values())
if left:
    print("\nnot killed:\n" + "\n".join(left))
elif unchecked:
    print(f"\nnothing survived so far; {unchecked} mutants not checked yet")
else:
    print("\nevery mutant killed")
PY
