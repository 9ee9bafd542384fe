#!/usr/bin/env bash
# The GPU path in one short run (under 5 minutes on one GPU): exact resume with and without
# --deterministic, spectra/s, peak memory, save time, the async vs sync save stall; NCCL with 2 ranks when there are 2 GPUs.
# On a fresh machine: python3 -m venv .venv && . .venv/bin/activate && pip install torch -e . first.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] && . .venv/bin/activate
python benchmarks/gpu_check.py "$@"
