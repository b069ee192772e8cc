#!/usr/bin/env bash
# Set up a virtual environment and run lint, type checks and the whole test suite
# (real Temporal dev server, SQLite, FAISS, hnswlib). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" dev,data
cd "$ROOT"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# One pytest process per core; the slowest tests named at the end.
exec .venv/bin/python -m pytest -n auto --durations=20 "$@"
