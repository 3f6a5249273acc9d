# ntdh-bench: every paper artefact is one target. `make install` is implied by each.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=
# the claims page reads the results folder the experiments wrote (--results-dir in ARGS)
RESULTS_DIR_ARG = $(shell echo '$(ARGS)' | grep -oE -- '--results-dir[= ][^ ]+')

.PHONY: install test test-slow lint format demo claims fig3 fig6 fig8 table1 table2 table3 table4 tensorboard bench clean help

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

# Tiny networks on a 2-core CPU: two single-threaded worker processes beat one process with
# two threads. Fig. 3 runs first: Figs. 6 and 8 reuse its cached teachers.
WORKERS ?= 2

demo: $(STAMP)  ## Figs. 3, 6 and 8 on synthetic data, quick size, each paper claim checked
	$(PY) experiments/gap_sweep.py --workers $(WORKERS) $(ARGS)
	$(PY) experiments/weight_sweep.py --dataset synthetic --workers $(WORKERS) $(ARGS)
	$(PY) experiments/mask_sweep.py --dataset synthetic --workers $(WORKERS) $(ARGS)
	$(VENV)/bin/ntdh claims $(RESULTS_DIR_ARG)

fig3: $(STAMP)  ## Fig. 3: KD against the domain gap (ARGS="--full --seeds 5" for the paper's size)
	$(PY) experiments/gap_sweep.py --workers $(WORKERS) $(ARGS)

fig6: $(STAMP)  ## Fig. 6: weight adjustment, alpha and beta swept across gaps
	$(PY) experiments/weight_sweep.py --dataset synthetic --workers $(WORKERS) $(ARGS)

fig8: $(STAMP)  ## Figs. 8 and 13: feature mask ratios true / false / random (ARGS="--mask sample")
	$(PY) experiments/mask_sweep.py --dataset synthetic --workers $(WORKERS) $(ARGS)

table1: $(STAMP)  ## Table I: model capacity and modality strength per available dataset
	$(PY) experiments/table1.py $(ARGS)

DATASET ?= mnist_m

table2: $(STAMP)  ## Table II, Figs. 9a, 10: six KD methods x feature masks (DATASET=digits offline)
	$(PY) experiments/table2.py --dataset $(DATASET) --workers $(WORKERS) $(ARGS)

table3: $(STAMP)  ## Table III, Fig. 9b: the six KD methods x feature masks on RAVDESS
	$(PY) experiments/table3.py $(ARGS)

table4: $(STAMP)  ## Table IV: PMF- and 2DPASS-style systems x sample masks (GPU-sized; ARGS="--gpus 4")
	$(PY) experiments/table4.py $(ARGS)

claims: $(STAMP)  ## results/CLAIMS.md: every verdict of every finished experiment, one page
	$(VENV)/bin/ntdh claims $(RESULTS_DIR_ARG)

tensorboard: $(STAMP)  ## open the TensorBoard logs of every run
	$(VENV)/bin/tensorboard --logdir runs

# One OpenMP thread per benchmark process: with the default, an OpenMP thread torch no longer
# uses spins and is counted in the CPU times (ensemble_sweep lifts it for its loop that runs
# with torch's own threads).
bench: $(STAMP)  ## speed benchmarks, ratios in benchmarks/RESULTS.md (QUICK=1: smaller sizes)
	@for b in benchmarks/*.py; do echo "== $$b"; OMP_NUM_THREADS=1 $(PY) $$b $(if $(QUICK),--quick) || exit 1; done

clean:  ## remove results, logs and caches (not the venv)
	rm -rf results runs cache .pytest_cache .ruff_cache
