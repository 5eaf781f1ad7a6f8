"""The benchmarks of layerlmc; ``bench/sweep.py`` is the one to run (see bench/README.md)."""

from pathlib import Path

# the checkout: subprocesses run in it and the machine's description names its commit
ROOT = Path(__file__).resolve().parents[1]
