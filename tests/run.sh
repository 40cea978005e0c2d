#!/usr/bin/env bash
# Set up everything the tests need (system packages and Python packages), then run them.
#   bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh --test
exec "${PYTHON:-python3}" -m pytest -q tests "$@"
