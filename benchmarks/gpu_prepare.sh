#!/usr/bin/env bash
# gpu_prepare.sh - run HERE, on a machine with network, before benchmarks/gpu_check.sh runs on
# a GPU machine without one: puts into .gpu/ (git-ignored; carry it with the run) cJSON's
# Debian packages (the GPU image may lack libcjson-dev) and Liger-Kernel's wheel (the
# benchmark's second anchor; pure Python, needs the torch and Triton already there).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
(cd .gpu && apt-get download libcjson1 libcjson-dev)
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpu \
    liger-kernel==0.8.5
ls -l .gpu
du -sh .gpu
