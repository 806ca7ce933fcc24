#!/usr/bin/env bash
# Set everything up (services, virtual environment) and run the citytel demo on local defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/citytel demo "$@"
