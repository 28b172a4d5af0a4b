# Two commands from a fresh clone: `make tune` (the study) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
# the run list without the trials: studies, tune, train and analyse runs, whatever page the trials push them to
UI_FILTER := http://127.0.0.1:5000/\#/experiments/1/runs?searchFilter=tags.%60moonvae.kind%60%20!%3D%20%27trial%27

.PHONY: install tune findings train analyse test test-slow test-ray format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,postgres,ray]'
	touch $@

tune: install  ## the main job: mlflow run . -e tune
	mlflow run . -e tune --experiment-name moonvae --env-manager local $(ARGS)
	@echo "studies: mlflow ui, then open $(UI_FILTER)"

# The studies designed for the study's findings (docs/findings.md), then analyse:
# 100 random trials per model for importance, every point of the three grids (n_trials above their size).
# A study already complete runs nothing again.
FINDINGS_GRIDS := capacity data-seeds probabilistic-seeds
findings: tune  ## the champions, the four findings studies, then analyse
	mlflow run . -e tune --experiment-name moonvae --env-manager local -P space=importance -P n_jobs=2 $(ARGS)
	for space in $(FINDINGS_GRIDS); do \
	  mlflow run . -e tune --experiment-name moonvae --env-manager local -P space=$$space -P n_trials=1000 \
	    -P n_jobs=2 $(ARGS) || exit 1; \
	done
	mlflow run . -e analyse --experiment-name moonvae --env-manager local

train: install
	mlflow run . -e train --experiment-name moonvae --env-manager local $(ARGS)

analyse: install
	mlflow run . -e analyse --experiment-name moonvae --env-manager local $(ARGS)

test: install  ## fast tests and lint
	$(BIN)/ruff check moonvae tests bench
	$(BIN)/ruff format --check moonvae tests bench
	$(BIN)/pytest

test-slow: install  ## the slow end-to-end tests only (exit 5, none selected, is not a failure)
	$(BIN)/pytest -m 'slow and not ray' || [ $$? -eq 5 ]

test-ray: install  ## the slow tests on a throwaway Ray cluster
	$(BIN)/pytest -m ray

format: install
	$(BIN)/ruff format moonvae tests bench
	$(BIN)/ruff check --fix moonvae tests bench

bench: install
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/tune_speed.py
	$(BIN)/python bench/study_speed.py --skip-epoch
	$(BIN)/python bench/analyse_speed.py

clean:
	rm -rf $(VENV) mlflow.db mlruns data optuna.db
