# Shortcuts for the README's commands (the README's commands themselves need no make).
.PHONY: install quickstart test bench soak

install:
	./scripts/install.sh

quickstart: install
	.venv/bin/layerlmc quickstart

test:
	./scripts/install.sh --test && .venv/bin/python -m pytest tests

# the standard-sweep benchmark (bench/sweep.py): ~10-15 minutes on 2 cores; writes docs/benchmarks.md
bench: install
	.venv/bin/python bench/sweep.py

# the load test of docs/reliability.md: 50 checkpoint pairs on local Ray, workers killed at random
soak: install
	.venv/bin/python -m pytest tests/test_soak.py -m slow -s
