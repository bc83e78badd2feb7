# kd-lightning: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KD := $(VENV)/bin/kd-lightning
SEEDS ?= 0
# Where runs live: the demo's runs are the tables' plain-CE and paper rows (kd_lightning/ablations/grid/store.py).
RUNS ?= runs/ablations

.DEFAULT_GOAL := help
.PHONY: help install lock demo test test-fast clean clean-runs

help: ## Show this list of targets
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | sort | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}'

# constraints.txt is the lock: the exact versions the tests and the README's numbers were measured with.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e '.[dev]' -c constraints.txt
	touch $@

install: $(VENV)/.installed ## Create .venv (if missing) and install kd-lightning with the locked versions (constraints.txt)

lock: ## Rewrite constraints.txt from what .venv holds (after deliberately changing a version)
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^-e'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

demo: install ## The paper's comparison: CE vs intra-class teacher -> KD student, and the student alone (synthetic, CPU)
	$(PY) experiments/demo.py --seeds $(SEEDS) --runs '$(RUNS)'

# W&B's sweep engine (the `sweeps` package, what `wandb sweep` runs server-side) pins numpy<2, so it gets a venv of its
# own; tests/test_sweeps.py runs it on the committed sweep files.
SWEEPS_VENV ?= .venv-sweeps
$(SWEEPS_VENV)/.installed:
	test -x $(SWEEPS_VENV)/bin/python || $(PYTHON) -m venv $(SWEEPS_VENV)
	$(SWEEPS_VENV)/bin/python -m pip install -qq sweeps==0.3.0
	touch $@

# Two pytest workers (pytest-xdist) on the 2-core machines the suite is sized for; a file's tests stay in one worker, so
# its module fixtures (a trained grid, the Slurm daemons) are built once. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: install $(SWEEPS_VENV)/.installed ## Run the test suite (TEST_WORKERS=2 processes)
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile

clean: ## Remove caches and logs (lightning_logs, wandb, __pycache__, .pytest_cache); keeps runs/, results/, .venv
	rm -rf lightning_logs wandb .pytest_cache
	find . -path ./.venv -prune -o -path ./runs -prune -o -name __pycache__ -type d -exec rm -rf {} +

clean-runs: ## Delete every trained run under runs/ (hours of training: asks first; CONFIRM=1 skips the question)
	@if [ -d runs ]; then \
		if [ "$(CONFIRM)" != 1 ]; then read -r -p "delete runs/ ($$(du -sh runs | cut -f1))? [y/N] " ok; \
			[ "$$ok" = y ] || { echo "kept runs/"; exit 0; }; fi; \
		rm -rf runs && echo "deleted runs/"; fi

include make/tables.mk

include make/bench.mk
