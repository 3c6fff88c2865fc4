#!/usr/bin/env bash
# Create .venv (once) and install rexomni with the given extras, pinned to the CPU torch build.
# Usage: scripts/setup.sh [EXTRAS]   (default: train,eval)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-train,eval}
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[${extras}]"
