#!/usr/bin/env bash
# Set up .venv and run the whole test suite on two workers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh train,eval,dev
# --durations=15: the slowest tests, for whoever keeps CI under its time limit.
exec .venv/bin/python -m pytest -n 2 -q --durations=15 tests "$@"
