#!/usr/bin/env bash
# Set everything up, then run the benchmark: `bash scripts/bench.sh` (full) or
# `bash scripts/bench.sh --quick`; any option of `python -m bench --help` is passed on.
set -euo pipefail
cd "$(dirname "$0")/.."
# Set-up messages go to stderr: standard output is the JSON summary alone.
exec 3>&1 1>&2
bash scripts/bootstrap.sh
# shellcheck source=scripts/lib/setup.sh
. scripts/lib/setup.sh
if ! command -v wrk >/dev/null && command -v apt-get >/dev/null; then
  # The HTTP load client: C, so that it costs the two cores little (else a Python one is used).
  # Waits for a package install already running, like the set-up.
  apt_install wrk
fi
if ! .venv/bin/python -c 'import matplotlib' 2>/dev/null || [ ! -x .venv/bin/py-spy ]; then
  printf '\033[1m==> installing the benchmark extra (matplotlib, py-spy)\033[0m\n'
  .venv/bin/python -m pip install -q -e ".[dev,bench]" 2>&1 | grep -v '^WARNING: Location' || true
fi
exec .venv/bin/python -m bench "$@" 1>&3
