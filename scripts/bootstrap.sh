#!/usr/bin/env bash
# Make this machine ready for citytel: PostgreSQL with PostGIS and Mosquitto installed and
# running, and a virtual environment with citytel installed. Safe to run again: it only does
# what is missing. Installing packages needs root (or sudo) on Debian/Ubuntu.
set -Eeuo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DB_URL=${CITYTEL_DATABASE_URL:-postgresql://postgres:postgres@127.0.0.1:5432/citytel}
MQTT_PORT=1883
# shellcheck source=scripts/lib/setup.sh
. scripts/lib/setup.sh
trap on_failure ERR

# --- PostgreSQL + PostGIS -------------------------------------------------------------------
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt_install postgresql postgresql-contrib
fi
PG_MAJOR=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! ls /usr/share/postgresql/"$PG_MAJOR"/extension/postgis.control >/dev/null 2>&1; then
  apt_install "postgresql-$PG_MAJOR-postgis-3"
fi
if ! listening 5432; then
  step "starting PostgreSQL $PG_MAJOR" "start it by hand (pg_ctlcluster $PG_MAJOR main start) and read its log under /var/log/postgresql"
  if command -v pg_lsclusters >/dev/null && [ -z "$(pg_lsclusters -h | awk -v v="$PG_MAJOR" '$1 == v')" ]; then
    as_root pg_createcluster "$PG_MAJOR" main
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$PG_MAJOR" main start
  for _ in $(seq 50); do listening 5432 && break; sleep 0.2; done
fi
if ! PGCONNECT_TIMEOUT=5 psql "${DB_URL%/*}/postgres" -Atqc 'SELECT 1' >/dev/null 2>&1; then
  # A fresh Debian cluster lets only the local 'postgres' OS user in; give the role the
  # password of the default URL so that TCP logins work for the demo and the tests.
  step "setting the local development password of the postgres role" "set CITYTEL_DATABASE_URL to a database URL that logs in, then run this script again"
  as_root su postgres -c "psql -qc \"ALTER ROLE postgres PASSWORD 'postgres'\""
fi

# --- TimescaleDB (optional) -----------------------------------------------------------------
# A prebuilt TimescaleDB beside the checkout is installed into PostgreSQL's directories; the
# tests then run on it in a private cluster that preloads it (the shared cluster is not
# reconfigured). Without it, citytel and its tests run on plain PostgreSQL.
TIMESCALEDB_BUNDLE="$ROOT/../shared/timescaledb"
if [ -x "$TIMESCALEDB_BUNDLE/install.sh" ] || [ -f "$TIMESCALEDB_BUNDLE/install.sh" ]; then
  step "installing TimescaleDB from $(basename "$(dirname "$TIMESCALEDB_BUNDLE")")/timescaledb" "citytel also runs on plain PostgreSQL: move that folder aside and run this script again"
  as_root bash "$TIMESCALEDB_BUNDLE/install.sh"
fi

# --- Mosquitto ------------------------------------------------------------------------------
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  apt_install mosquitto mosquitto-clients
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
step "checking the MQTT broker" "see var/mosquitto/mosquitto.log, or stop what holds the port, then run this script again"
ensure_broker "$MOSQUITTO" "$ROOT" "$MQTT_PORT"

# --- Python ---------------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  fail "citytel needs Python >= 3.11 (found: $($PYTHON --version 2>&1)): install it, or set PYTHON=/path/to/python3.11 and run this script again"
fi
if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  apt_install python3-venv
fi
if [ ! -x .venv/bin/python ]; then
  step "creating .venv" "remove .venv and run this script again"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.citytel-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  step "installing citytel and its development tools into .venv (about a minute the first time)" \
    "check the network (pip needs the package index), then run this script again"
  # pip's own lines (Collecting…, Downloading…, Installing…) are the progress; not the noise.
  .venv/bin/python -m pip install --upgrade pip 2>&1 \
    | grep -v -e '^WARNING: Location' -e '^Requirement already satisfied' || true
  .venv/bin/python -m pip install -e ".[dev]" 2>&1 \
    | grep -v -e '^WARNING: Location' -e '^Requirement already satisfied' || true
  .venv/bin/python -c 'import citytel, simulators' || fail "citytel did not install into .venv: read pip's messages above, fix their cause, then run this script again"
  touch "$stamp"
fi
say "ready: PostgreSQL $PG_MAJOR with PostGIS on 5432, Mosquitto on $MQTT_PORT, .venv"
