# Shortcuts for the README's commands (the README's commands themselves need no make).
.PHONY: install quickstart test

install:
	./scripts/install.sh

quickstart: install
	.venv/bin/layerlmc quickstart

test: install
	.venv/bin/python -m pytest tests
