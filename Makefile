# The two set-up commands from the README:
#   make serve   install everything, then serve the embedded default on http://127.0.0.1:8000
#   make test    install the test needs, then run the whole suite
HOST ?= 127.0.0.1
PORT ?= 8000
ARGS ?=

.PHONY: install install-test serve test test-fast bench

install:
	bash scripts/install.sh

install-test:
	bash scripts/install.sh test

serve: install
	.venv/bin/omnilive serve --host $(HOST) --port $(PORT) $(ARGS)

test: install-test
	.venv/bin/python -m pytest -q -ra tests

test-fast: install-test
	.venv/bin/python -m pytest -q -ra -m "not slow" tests

bench: install-test
	.venv/bin/python bench/latency.py
