# clsr — the two commands: `make repro` (regenerate reports/) and `make test` (the whole suite).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# pip prints a warning per missing local index folder on some machines; keep the log readable
PIPFILTER := { grep -v "^WARNING: Location" || true; }

.PHONY: help setup test test-fast repro repro-quick sweep readme bench lab clean-venv

help:
	@echo "make setup   create $(VENV), install clsr[dev] (torch==2.13.0 CPU build), register the 'clsr' Jupyter kernel"
	@echo "make test    setup + the whole test suite (pytest: unit, protocol, notebooks, pipeline end to end)"
	@echo "make repro   setup + dvc repro: regenerate every table and figure in reports/ (JOBS=N: N runs side by side)"
	@echo "make repro-quick  the quick look: params-quick.yaml over params.yaml, then dvc repro (under-trained models)"
	@echo "make sweep   the generator sweep of the disentanglement study (hours; not part of make repro)"
	@echo "make readme  copy reports/tables/main.md into the README's results block (after make repro)"
	@echo "make bench   setup + speed/scale benchmarks -> reports/benchmarks/"
	@echo "make lab     setup + JupyterLab on http://127.0.0.1:8888"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]" 2>&1 | $(PIPFILTER)
	$(PY) -m ipykernel install --sys-prefix --name clsr --display-name "Python (clsr)" >/dev/null
	@rm -f $(VENV)/.installed-*
	@touch $@

test: setup
	$(VENV)/bin/pytest -q

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

# the default targets: every table and figure of reports/ (the generator sweep is `make sweep`, apart)
REPRO_TARGETS := report ablation_report disentanglement cost
JOBS ?= $(shell nproc 2>/dev/null || echo 1)

# the data first, then every training run (JOBS side by side, each with train.threads threads), then the stages
# in order with a [stage k/N] line each (the training stages only collect the finished runs)
REPRO_STEPS = source $(VENV)/bin/activate && dvc repro protocol && \
	  { [ "$(JOBS)" = 1 ] || python -m clsr prefill --jobs $(JOBS); } && python -m clsr repro $(REPRO_TARGETS)

repro: setup
	$(REPRO_STEPS)

repro-quick: setup
	cp params-quick.yaml params.yaml
	@echo "params.yaml now holds the quick profile (git checkout params.yaml restores the converged default)"
	$(REPRO_STEPS)

sweep: setup
	source $(VENV)/bin/activate && dvc repro sweep_data && \
	  { [ "$(JOBS)" = 1 ] || python -m clsr prefill --sweep --jobs $(JOBS); } && python -m clsr repro sweep_report

readme: setup
	$(PY) -m clsr readme

bench: setup
	source $(VENV)/bin/activate && $(PY) benchmarks/run_all.py

lab: setup
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --no-browser --allow-root notebooks/

clean-venv:
	rm -rf $(VENV)
