#!/usr/bin/env bash
# Set up .venv and run the whole test suite on two workers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh train,eval,dev
exec .venv/bin/python -m pytest -n 2 -q tests "$@"
