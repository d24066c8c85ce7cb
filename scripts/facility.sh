#!/usr/bin/env bash
# Start a complete local Casa facility (README's first command). Installs what it needs on first run.
#   ./scripts/facility.sh [--port 8000] [--config my-facility.py]...   (--help lists every option)
# --config FILE: a JupyterHub config fragment run after the generated configuration (profiles, lifetimes,
# Dask backends, ...). The facility (casa_demo/) is a try-out that lives in this repository, not in the wheel.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CASA_PROVISION_MINIMAL=1 "$ROOT/scripts/provision.sh"
# stay in the caller's directory: relative --config and --state paths mean what they say
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$ROOT/.venv/bin/python" -m casa_demo.facility "$@"
