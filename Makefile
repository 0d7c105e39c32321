# imgzoo — `make run` and `make test` are the two commands the README promises.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= serve,train,dev
comma := ,
INSTALLED := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
PYTEST_ARGS ?=

.PHONY: help install system-deps run demo zoo test lint format typecheck clean

help:
	@echo "make run      install, then train the demo model, export it and serve it on 127.0.0.1:8000"
	@echo "make test     install, then lint, type-check and run the whole test suite"
	@echo "make zoo      train + export the best model of each data set: make zoo ZOO_DATA='cifar10=DIR ...'"
	@echo "make lint     ruff + mypy only"
	@echo "make clean    remove the virtual environment and generated files"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml requirements/constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[$(EXTRAS)]'
	touch $@

install: $(INSTALLED)

# Debian packages some tests drive for real (promtool). Installed only where we are root
# with apt; elsewhere those tests skip and say why.
system-deps:
	@bash scripts/install-system-deps.sh

run: install
	$(BIN)/imgzoo demo

# The model zoo into model_repository (`imgzoo zoo --list` shows it); hours of CPU per data set.
# tcmalloc keeps a training step's freed activations mapped instead of faulting them in afresh
# (training/host.py, docs/training.md): preloaded where installed (make system-deps).
# Found by training/host.py's own search, evaluated when the recipe runs (after install).
TCMALLOC ?= $(shell $(BIN)/python -c 'from training.host import find_tcmalloc; print(find_tcmalloc() or "")')
ZOO_DATA ?=
zoo: install
	@if [ -z "$(ZOO_DATA)" ]; then \
		$(BIN)/imgzoo zoo --list; \
		echo "make zoo ZOO_DATA='cifar10=DIR fer2013=DIR butterfly=DIR' builds it"; exit 2; \
	fi
	LD_PRELOAD="$(TCMALLOC)" $(BIN)/imgzoo zoo $(foreach d,$(ZOO_DATA),--data $(d))

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install system-deps lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs model_repository .mypy_cache .ruff_cache .pytest_cache *.egg-info

# The deployment test on a real Docker engine (issue 6): docker.io, dockerd, local base images.
include deploy/Makefile.deploy
