# The two set-up commands of the README. Both create (or reuse) .venv and fetch the bundled data.
VENV ?= .venv
export NAS_LIGHTNING_VENV := $(VENV)

.PHONY: setup data quickstart test lint benchmark

setup:
	@bash scripts/setup_env.sh

data: setup
	@bash scripts/get_data.sh

quickstart: data
	@bash scripts/quickstart.sh

test: data
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

benchmark: setup
	$(VENV)/bin/python benchmarks/supernet_step.py
