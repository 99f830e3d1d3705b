# `make demo` and `make test` each create .venv with the machine's python3 when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMPT ?= def fibonacci(n):\n

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): setup.py | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/zoo-train --config configs/experiments/code_small.yaml $(if $(wildcard runs/code_small/checkpoints),--resume,)
	$(BIN)/zoo-generate --checkpoint runs/code_small --prompt "$(PROMPT)"

test: $(STAMP)
	$(BIN)/python -m pytest tests -q

bench: $(STAMP)
	$(BIN)/python bench/ar_decode.py

clean:
	rm -rf runs .pytest_cache
