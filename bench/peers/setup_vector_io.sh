#!/usr/bin/env bash
# vector-io (vdf-io) with LanceDB for bench/copy_throughput.py, in a virtual environment of its
# own: its CLI imports every database client it supports at start, and those pins (astrapy<1,
# setuptools<81 for pkg_resources) do not mix with vecmigrate's dependencies.
#
# vdf-io requires torch, which the export and import measured never run. It is installed first,
# as a CPU build: on Linux a plain `pip install torch` takes a CUDA build of several GB. TORCH
# names another requirement (say, a CPU wheel already on disk: TORCH=torch==2.13.0), and
# TORCH_INDEX another index (default PyTorch's CPU index; TORCH_INDEX= uses pip's own).
# Usage: bench/peers/setup_vector_io.sh [DIR]   (default bench/.vector-io)
set -euo pipefail
DIR="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.vector-io}"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch}"
TORCH_INDEX="${TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
"$PYTHON" -m venv "$DIR"
"$DIR/bin/python" -m pip install --quiet --upgrade pip
if [[ -n "$TORCH_INDEX" ]]; then
    "$DIR/bin/python" -m pip install --quiet "$TORCH" --index-url "$TORCH_INDEX"
else
    "$DIR/bin/python" -m pip install --quiet "$TORCH"
fi
"$DIR/bin/python" -m pip install --quiet vdf-io lancedb pylance "astrapy<1" "setuptools<81"
echo "vector-io ready: python bench/copy_throughput.py --vector-io $DIR/bin/python"
