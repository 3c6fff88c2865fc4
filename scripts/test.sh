#!/usr/bin/env bash
# Set up .venv and run the whole test suite on two workers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh train,eval,dev,app,supervision
# The app's browser test drives the system's Chromium through Selenium (a browser download cannot
# work here). As root, install Debian's when it is missing; elsewhere that test is skipped, saying why.
if ! command -v chromedriver >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
    || echo "scripts/test.sh: could not install chromium; the browser test will be skipped" >&2
fi
# --durations=15: the slowest tests, for whoever keeps CI under its time limit.
exec .venv/bin/python -m pytest -n 2 -q --durations=15 tests "$@"
