#!/usr/bin/env bash
# The GPU check of issues 7 and 14, one prepared script of under 5 minutes: the standard sweep
# (baseline, every evaluator, forward floor) of the MLP, the small CNN and the real ResNet-18
# without normalisation (width 64) at batch 512 (bench/cases.py sizes it), plus the
# ~100M-parameter memory test, on the first CUDA GPU. Writes docs/benchmarks_gpu.md (or $1).
# The CLI case and the bf16 runs are CPU goals and are left out here.
#
#   bench/gpu.sh [OUT.md]      on a machine with a GPU
#   bench/gpu.sh --dry-run     on any machine: the same script and options on the CPU at
#                              --quick sizes (one model), writing nothing; checks the plumbing
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
if [ "${1:-}" = "--dry-run" ]; then
    exec "$PYTHON" bench/sweep.py --device cpu --quick --models mlp --threads 1 --no-profile \
        --no-cli --no-bf16 --no-memory
fi
# a hard stop at 5 minutes: a GPU session's time is counted
exec timeout 300 "$PYTHON" bench/sweep.py --device cuda --threads 4 --no-profile --no-cli \
    --out "${1:-docs/benchmarks_gpu.md}"
