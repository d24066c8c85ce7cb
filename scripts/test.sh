#!/usr/bin/env bash
# Install everything the tests need (pinned, idempotent), then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/provision.sh
exec .venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
