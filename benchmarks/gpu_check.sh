#!/usr/bin/env bash
# The one prepared GPU run (issue 12): every part time-boxed, records in OUT/records.jsonl as it goes.
#
#   bash benchmarks/gpu_check.sh [--cpu] [--out DIR] [--deadline SECONDS] [--only PART,...] [--list]
#
# Run from the repository root, with the Python that has dossr's dependencies first on PATH
# (or PYTHON=/path/to/python). On a GPU it ends within 8 minutes; --cpu (the tiny model, what CI
# runs) within a few. See benchmarks/gpu_check.py for the parts.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
