#!/usr/bin/env bash
# Set everything up, then run the checks and the whole test suite against real services.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy --strict"
.venv/bin/mypy
echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
