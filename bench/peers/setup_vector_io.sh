#!/usr/bin/env bash
# vector-io (vdf-io) with LanceDB for bench/copy_throughput.py, in a virtual environment of its
# own: its CLI imports every database client it supports at start, and those pins (astrapy<1,
# setuptools<81 for pkg_resources) do not mix with vecmigrate's dependencies.
# Usage: bench/peers/setup_vector_io.sh [DIR]   (default bench/.vector-io)
set -euo pipefail
DIR="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.vector-io}"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m venv "$DIR"
"$DIR/bin/python" -m pip install --quiet --upgrade pip
"$DIR/bin/python" -m pip install --quiet vdf-io lancedb pylance "astrapy<1" "setuptools<81"
echo "vector-io ready: python bench/copy_throughput.py --vector-io $DIR/bin/python"
