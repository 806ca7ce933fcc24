#!/usr/bin/env bash
# Set everything up (services, virtual environment) and run the citytel demo on local defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# The broker the set-up found or started with citytel's configuration (another port than 1883
# when a broker with a different configuration holds it), unless one is chosen explicitly.
if [ -z "${CITYTEL_MQTT_URL:-}" ] && [ -f var/mqtt-url ]; then
  CITYTEL_MQTT_URL=$(cat var/mqtt-url)
  export CITYTEL_MQTT_URL
fi
exec .venv/bin/citytel demo "$@"
