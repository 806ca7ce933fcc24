#!/usr/bin/env bash
# Make this machine ready for citytel: PostgreSQL with PostGIS and Mosquitto installed and
# running, and a virtual environment with citytel installed. Safe to run again: it only does
# what is missing. Installing packages needs root (or sudo) on Debian/Ubuntu.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DB_URL=${CITYTEL_DATABASE_URL:-postgresql://postgres:postgres@127.0.0.1:5432/citytel}
MQTT_PORT=1883

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_updated=
apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "missing: $* — install them with your package manager" >&2
    exit 1
  fi
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  say "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- PostgreSQL + PostGIS -------------------------------------------------------------------
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt_install postgresql postgresql-contrib
fi
PG_MAJOR=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! ls /usr/share/postgresql/"$PG_MAJOR"/extension/postgis.control >/dev/null 2>&1; then
  apt_install "postgresql-$PG_MAJOR-postgis-3"
fi
if ! listening 5432; then
  say "starting PostgreSQL $PG_MAJOR"
  if command -v pg_lsclusters >/dev/null && [ -z "$(pg_lsclusters -h | awk -v v="$PG_MAJOR" '$1 == v')" ]; then
    as_root pg_createcluster "$PG_MAJOR" main
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$PG_MAJOR" main start
  for _ in $(seq 50); do listening 5432 && break; sleep 0.2; done
fi
if ! PGCONNECT_TIMEOUT=5 psql "${DB_URL%/*}/postgres" -Atqc 'SELECT 1' >/dev/null 2>&1; then
  # A fresh Debian cluster lets only the local 'postgres' OS user in; give the role the
  # password of the default URL so that TCP logins work for the demo and the tests.
  say "setting the local development password of the postgres role"
  as_root su postgres -c "psql -qc \"ALTER ROLE postgres PASSWORD 'postgres'\""
fi

# --- TimescaleDB (optional) -----------------------------------------------------------------
# A prebuilt TimescaleDB beside the checkout is installed into PostgreSQL's directories; the
# tests then run on it in a private cluster that preloads it (the shared cluster is not
# reconfigured). Without it, citytel and its tests run on plain PostgreSQL.
TIMESCALEDB_BUNDLE="$ROOT/../shared/timescaledb"
if [ -x "$TIMESCALEDB_BUNDLE/install.sh" ] || [ -f "$TIMESCALEDB_BUNDLE/install.sh" ]; then
  say "installing TimescaleDB from $(basename "$(dirname "$TIMESCALEDB_BUNDLE")")/timescaledb"
  as_root bash "$TIMESCALEDB_BUNDLE/install.sh"
fi

# --- Mosquitto ------------------------------------------------------------------------------
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  apt_install mosquitto mosquitto-clients
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
if ! listening "$MQTT_PORT"; then
  say "starting Mosquitto on port $MQTT_PORT with deploy/mosquitto.conf"
  mkdir -p var/mosquitto
  # A developer's local broker only: open to anonymous clients on 127.0.0.1, without the
  # password and ACL files that `citytel gateways` writes for a real deployment.
  sed -e "s#^persistence_location .*#persistence_location $ROOT/var/mosquitto/#" \
      -e "s#^listener 1883.*#listener $MQTT_PORT 127.0.0.1#" \
      -e 's#^allow_anonymous .*#allow_anonymous true#' -e '/^password_file /d' -e '/^acl_file /d' \
      -e '/^user /d' -e '/^log_dest /d' deploy/mosquitto.conf > var/mosquitto.conf
  printf 'user %s\nlog_dest file %s/var/mosquitto/mosquitto.log\n' "$(id -un)" "$ROOT" >> var/mosquitto.conf
  "$MOSQUITTO" -d -c var/mosquitto.conf
  for _ in $(seq 50); do listening "$MQTT_PORT" && break; sleep 0.2; done
fi

# --- Python ---------------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "citytel needs Python >= 3.11 (found: $($PYTHON --version 2>&1))" >&2
  exit 1
fi
if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  apt_install python3-venv
fi
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.citytel-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing citytel and its development tools into .venv"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c 'import citytel, simulators' && touch "$stamp"
fi
say "ready: PostgreSQL $PG_MAJOR with PostGIS on 5432, Mosquitto on $MQTT_PORT, .venv"
