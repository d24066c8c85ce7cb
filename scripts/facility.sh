#!/usr/bin/env bash
# Start a complete local Casa facility (README's first command). Installs what it needs on first run.
set -euo pipefail
cd "$(dirname "$0")/.."
CASA_PROVISION_MINIMAL=1 ./scripts/provision.sh
exec .venv/bin/python -m casa_hub.facility "$@"
