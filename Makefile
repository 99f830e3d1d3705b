# `make demo` and `make test` each create .venv with the machine's python3 when missing and
# install zoo with the exact versions of requirements/lock.txt (the releases the suite last passed
# on), so a new release on PyPI cannot break them; `make lock` moves the lock to the newest ones.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
# PyTorch's CPU wheels (PyPI's Linux torch is the CUDA build, several GB), asked for torch alone
# (its dependencies and everything else come from PyPI); empty to skip.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
CPU_TORCH = pip install --quiet --no-deps --extra-index-url $(TORCH_INDEX)
# pytest-xdist workers: most of the suite is single-threaded XLA compiles.
WORKERS ?= 2
PROMPT ?= class Stack:\n    def __init__(self

.PHONY: demo test bench lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): setup.py $(LOCK) | $(BIN)/python
	$(if $(TORCH_INDEX),$(BIN)/$(CPU_TORCH) --constraint $(LOCK) torch)
	$(BIN)/pip install --quiet --constraint $(LOCK) -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/zoo-train --config configs/experiments/code_small.yaml $(if $(wildcard runs/code_small/checkpoints),--resume,)
	$(BIN)/zoo-generate --checkpoint runs/code_small --prompt "$(PROMPT)"
	@echo "--- the same prompt, greedy, plain vs speculative (prompt lookup) ---"
	$(BIN)/zoo-generate --checkpoint runs/code_small --prompt "$(PROMPT)" --temperature 0 \
		--speculative prompt_lookup

test: $(STAMP)
	$(BIN)/python -m pytest tests -q -n $(WORKERS) --dist loadfile --durations=10

# Re-resolve every dependency to its newest release in a fresh environment, run the suite there,
# and only if it passes rewrite the lock (then `make test` reinstalls from it).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),.venv-lock/bin/$(CPU_TORCH) torch)
	.venv-lock/bin/pip install --quiet --upgrade -e ".[test]"
	.venv-lock/bin/pip check
	.venv-lock/bin/python -m pytest tests -q -n $(WORKERS) --dist loadfile
	.venv-lock/bin/python requirements/write_lock.py > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock

bench: $(STAMP)  # the first run trains the speculative benchmarks' models once (~100 min)
	$(BIN)/python bench/ar_decode.py
	$(BIN)/python bench/ar_decode.py --dtype bfloat16
	$(BIN)/python bench/inference_overheads.py
	$(BIN)/python bench/vs_transformers.py --ar-only
	$(BIN)/python bench/vs_transformers.py --ar-only --dtype bfloat16
	$(BIN)/python bench/speculative.py
	$(BIN)/python bench/speculative.py --dtype bfloat16 --batches 1
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/tree_attention.py
	$(BIN)/python bench/ssm_tree_scan.py
	$(BIN)/python bench/parallel.py
	$(BIN)/python bench/vs_transformers.py
	$(BIN)/python bench/speculative.py --target configs/experiments/code_mamba.yaml --batches 1
	$(BIN)/python bench/speculative.py --target configs/experiments/code_hybrid.yaml --batches 1
	$(BIN)/python bench/next_block.py  # trains its five models once (~50 min)
	$(BIN)/python bench/diffusion.py   # trains two diffusion models and their AR judge once (~90 min)
	$(BIN)/python bench/extend_cost.py
	$(BIN)/python bench/extend_cost.py --dtype bfloat16 --name extend_cost_bfloat16
	$(BIN)/python bench/charts.py      # every chart again, and the targets' loss curves

clean:
	rm -rf runs .pytest_cache .venv-lock .cache
