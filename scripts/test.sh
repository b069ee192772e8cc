#!/usr/bin/env bash
# Set up a virtual environment and run lint, type checks and the whole test suite
# (real Temporal dev server, SQLite, FAISS, hnswlib). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" dev,data
cd "$ROOT"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# One pytest process per core and one more: the tests wait on servers and timers for much of
# their time (with one a core, the cores stood idle a quarter of a CI run's tests). Each process
# starts with a run of the collection, and one that runs out takes the untouched end of
# another's ("worksteal"), so the test that takes many minutes (marked `long`, collected first)
# does not hold back the ones queued behind it. The slowest tests are named at the end; `-n 0`
# among the arguments runs them in one process.
CORES="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"
exec .venv/bin/python -m pytest -n "$((CORES + 1))" --dist worksteal --durations=20 "$@"
