#!/usr/bin/env bash
# Set up a virtualenv (first run only) and start the exporter against its built-in simulated
# Buddy API. Open http://localhost:8398/ ; stop with Ctrl-C. Extra arguments go to buddy-exporter.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/buddy-exporter ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check .
fi
exec .venv/bin/buddy-exporter --demo "$@"
