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
# The suite waits on brokers, databases and timers far more than it computes: it runs on
# CITYTEL_TEST_WORKERS pytest-xdist workers (each with its own private cluster and broker; the
# fault tests one at a time, see tests/integration/conftest.py), and the fallback subset runs
# beside it, on the machine's shared cluster, which the TimescaleDB run does not use.
WORKERS=${CITYTEL_TEST_WORKERS:-4}
FALLBACK=(tests/integration/test_store.py tests/integration/test_migrations.py
  tests/integration/test_history.py tests/integration/test_zone_reports.py
  tests/integration/test_pipeline.py
  tests/integration/test_api.py tests/integration/test_roles.py)
if [ -f ../shared/timescaledb/install.sh ] || .venv/bin/python -c \
    'import sys; from tests.integration.services import timescaledb_installed as t; sys.exit(not t())'
then
  fallback_log=$(mktemp)
  trap 'rm -f "$fallback_log"' EXIT
  # No cache plugin here: two pytest runs would write the same .pytest_cache at once.
  CITYTEL_TEST_STORE=postgres .venv/bin/python -m pytest -q -p no:cacheprovider "${FALLBACK[@]}" \
    >"$fallback_log" 2>&1 &
  fallback=$!
  echo "==> pytest on TimescaleDB ($WORKERS workers; the fallback subset runs beside it)"
  status=0
  CITYTEL_TEST_STORE=timescaledb .venv/bin/python -m pytest -q -n "$WORKERS" --dist loadgroup \
    || status=$?
  fallback_status=0
  wait "$fallback" || fallback_status=$?
  echo "==> pytest on plain PostgreSQL (fallback subset)"
  cat "$fallback_log"
  if [ "$status" -ne 0 ] || [ "$fallback_status" -ne 0 ]; then
    echo "pytest failed: TimescaleDB run exit $status, plain-PostgreSQL fallback exit $fallback_status" >&2
    exit 1
  fi
else
  # One worker: on the shared cluster, the workers' migrations would race to create the roles.
  echo "==> pytest on plain PostgreSQL"
  CITYTEL_TEST_STORE=postgres .venv/bin/python -m pytest -q
fi
