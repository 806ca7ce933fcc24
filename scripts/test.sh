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
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# The whole suite on TimescaleDB when it is installed (a test fails if it then is not used),
# and the plain-PostgreSQL fallback: the migrations, the pipeline and the API on a plain cluster.
if [ -f ../shared/timescaledb/install.sh ] || .venv/bin/python -c \
    'import sys; from tests.integration.services import timescaledb_installed as t; sys.exit(not t())'
then
  echo "==> pytest on TimescaleDB"
  CITYTEL_TEST_STORE=timescaledb .venv/bin/python -m pytest -q
  echo "==> pytest on plain PostgreSQL (fallback subset)"
  CITYTEL_TEST_STORE=postgres .venv/bin/python -m pytest -q tests/integration/test_store.py \
    tests/integration/test_migrations.py tests/integration/test_history.py \
    tests/integration/test_zone_reports.py \
    tests/integration/test_pipeline.py tests/integration/test_api.py \
    tests/integration/test_roles.py
else
  echo "==> pytest on plain PostgreSQL"
  CITYTEL_TEST_STORE=postgres .venv/bin/python -m pytest -q
fi
