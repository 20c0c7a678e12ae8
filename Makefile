# The two commands of the quick start:
#   make run    create .venv, install the pinned dependencies, run the whole DVC pipeline
#   make test   same environment, run the test suite
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench exps clean-venv

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The stages run `python stages/...`: the venv's python must come first on PATH.
run: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

test: $(BIN)/.installed
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python -m pytest benchmarks --benchmark-enable

# The experiments in one table that fits the terminal: name, headline metrics, the params
# set with -S (cnnspec exps, README's Experiments). A venv already active ($$VIRTUAL_ENV)
# or present (.venv) is used as it is: no venv is made and nothing is reinstalled.
ifdef VIRTUAL_ENV
EXPS_BIN := $(VIRTUAL_ENV)/bin
EXPS_NEEDS :=
else ifneq ($(wildcard $(BIN)/cnnspec),)
EXPS_BIN := $(BIN)
EXPS_NEEDS :=
else
EXPS_BIN := $(BIN)
EXPS_NEEDS := $(BIN)/.installed
endif

exps: $(EXPS_NEEDS)
	PATH="$(abspath $(EXPS_BIN)):$$PATH" cnnspec exps

clean-venv:
	rm -rf $(VENV)
