# The two commands of the quick start:
#   make run    create .venv, install the pinned dependencies, run the whole DVC pipeline
#   make test   same environment, run the test suite
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint fuzz bench bench-test exps clean-venv

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The peer benchmark's frameworks (Keras, PyTorch Lightning): only `make bench*` needs them.
$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $@

# The stages run `python stages/...`: the venv's python must come first on PATH.
run: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

# One worker per core; --dist loadgroup keeps the tests that share a module-scoped
# fixture (a trained pipeline repository, say) on one worker (tests/conftest.py).
test: $(BIN)/.installed
	$(BIN)/python -m pytest -n auto --dist loadgroup

# ruff's lint and import order for every Python file; `ruff format` is configured but
# not enforced (see pyproject.toml).
lint: $(BIN)/.installed
	$(BIN)/ruff check .

# The fuzz suite with 20 times the cases of `make test`, fresh random ones each run
# (tests/fuzzing.py): specs, expressions, params.yaml, CSV files, images, checkpoints.
fuzz: $(BIN)/.installed
	$(BIN)/python -m pytest tests/test_spec_fuzz.py --hypothesis-profile=fuzz -q

bench: $(BIN)/.bench-installed
	$(BIN)/python -m pytest benchmarks --benchmark-enable

# The benchmark scripts' own tests that need Keras and Lightning (benchmarks/test_*.py).
bench-test: $(BIN)/.bench-installed
	$(BIN)/python -m pytest -n auto --dist loadgroup $(wildcard benchmarks/test_*.py)

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
