# kd-lightning: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KD := $(VENV)/bin/kd-lightning
SEEDS ?= 0

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast clean

help: ## Show this list of targets
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | sort | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## Create .venv (if missing) and install kd-lightning with its pinned dependencies

demo: install ## The main job: teacher -> distilled student vs student alone on the synthetic set, CPU, offline
	$(PY) experiments/demo.py --seeds $(SEEDS)

test: install ## Run the test suite
	$(VENV)/bin/pytest -q

clean: ## Remove run outputs (runs/); keeps results/ (the built tables) and .venv
	rm -rf runs lightning_logs wandb

include make/tables.mk

include make/bench.mk
