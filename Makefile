# ntdh-bench: every paper artefact is one target. `make install` is implied by each.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install test test-slow lint format demo fig3 table1 tensorboard bench clean help

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the suite with its dev tools

test: $(STAMP)  ## the default test suite (fast; under 10 minutes on 2 CPU cores)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)  ## the slow tests too
	$(PY) -m pytest -q

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: $(STAMP)  ## the synthetic-data figures, quick size, with the paper's claims checked
	$(PY) experiments/gamma_sweep.py $(ARGS)

fig3: $(STAMP)  ## Fig. 3: KD against the domain gap (ARGS="--full --seeds 5" for more)
	$(PY) experiments/gamma_sweep.py $(ARGS)

table1: $(STAMP)  ## Table I: model capacity and modality strength per available dataset
	$(PY) experiments/table1.py $(ARGS)

tensorboard: $(STAMP)  ## open the TensorBoard logs of every run
	$(VENV)/bin/tensorboard --logdir runs

bench: $(STAMP)  ## speed benchmarks (print ratios)
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:  ## remove results, logs and caches (not the venv)
	rm -rf results runs cache .pytest_cache .ruff_cache
