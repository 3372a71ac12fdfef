# The kit's entry points. Every target creates/reuses the local virtual environment (.venv) itself.
#   make reproduce   set up, fetch data if needed, run every notebook at the cpu profile -> reports/cpu/
#   make test        set up, run the test suite (what CI runs)
#   make zoo         rebuild the pre-trained checkpoints the notebooks use (zoo/, about 2 h on 2 cores)
#   make seeds       the downstream comparison over seeds 0, 1, 2 -> reports/cpu/seeds.md
#   make compare     the supplement's comparison methods through the same protocols -> reports/cpu/compare/
SHELL := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROFILE ?= cpu

# CI and developer machines have a read-only copy of the recordings beside the checkout.
ifeq ($(AVLIB_DATA_ROOT),)
ifneq ($(wildcard ../shared/data/fsdd),)
export AVLIB_DATA_ROOT := $(abspath ../shared/data)
endif
endif

.PHONY: setup reproduce test data smoke bench lab clean-reports check-notebooks seeds zoo compare budgets

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

data: setup
	@$(PY) -c "from avlib.paths import data_root; print('data:', data_root(require=('fsdd', 'mnist')))" 2>/dev/null \
	  || $(PY) -m avlib.data.download

reproduce: data
	$(PY) -m avlib.reproduce --profile $(PROFILE)

smoke: setup
	$(PY) -m avlib.reproduce --profile smoke

# the comparison repeated over 3 seeds (downstream notebooks; the zoo's checkpoints are shared)
seeds: data
	$(PY) -m avlib.reproduce --profile $(PROFILE) --seeds 0 1 2 --from 02_pretraining

# the comparison methods (zoo entries) through the downstream protocols; reuses the main job's finished runs
compare: data
	$(PY) -m avlib.reproduce --profile $(PROFILE) --manifest notebooks/compare.yaml --out reports/$(PROFILE)/compare --runs runs/$(PROFILE)

# validation learning curves of every protocol from each initialization -> reports/cpu/budgets/
budgets: data
	$(PY) -m avlib.budgets --profile $(PROFILE)

# rebuild the model zoo of a profile (zoo/manifest.json records how each file was made)
zoo: data
	$(PY) -m avlib.zoo build --profile $(PROFILE)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m avlib.bench

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean-reports:
	rm -rf reports/$(PROFILE) runs/$(PROFILE)
