#!/usr/bin/env bash
# Issue 7's GPU check, one prepared script of under 10 minutes: the standard sweep (baseline,
# every evaluator, forward floor) of the MLP, the small CNN and the real ResNet-18 without
# normalisation (width 64) at batch 512 on 10,240 + 10,240 Fashion-MNIST images, plus the
# ~100M-parameter memory test, on the first CUDA GPU. Writes docs/benchmarks_gpu.md (or $1).
#
# On a machine without network, take the data along: copy Debian's Fashion-MNIST files into
# an ignored folder of the checkout (e.g. `mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist
# .data/`) and carry it; this script points LAYERLMC_DATA at it when it is there.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .data/fashion-mnist ] && export LAYERLMC_DATA="$PWD/.data"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
# layerlmc from this checkout, installed or not
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" bench/sweep.py --device cuda --threads 4 --no-profile --out "${1:-docs/benchmarks_gpu.md}"
