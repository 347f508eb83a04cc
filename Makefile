# Two commands matter (see README): `make demo` and `make test`. Everything installs into .venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# CPU installs pin torch to the local CPU wheel; GPU machines run `make install CONSTRAINTS=` (or pip directly).
CONSTRAINTS ?= constraints-cpu.txt
PIP_C   := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: venv install demo test test-fast lint clean gpu-wheels

$(BIN)/python:
	$(PY) -m venv $(VENV)

venv: $(BIN)/python

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install -q $(PIP_C) -e ".[demo,dev]"
	touch $@

install: $(VENV)/.installed

# The embedded default sweep: real SmolLM2-135M-Instruct + movie-sentiment, fully offline after the first fetch
# (4 ADePT trials packed over one backbone, ASHA, local Ray, ./mlflow.db; ~6 min on this project's 2-core AMD EPYC
# with AVX-512, ~24 min on an AVX2-only machine: see README).
demo: install
	$(BIN)/python jobs/tune_adept.py

# Three test files at a time: the suite mostly waits on Ray, Train and MLflow processes (a serial run used 31 CPU-min
# in 57 min); --dist loadfile keeps each file's module fixtures (an MLflow server, a sweep) on one worker, and
# --no-loadscope-reorder hands files out longest first (tests/conftest.py) instead of most-tests first.
test: install
	@status=0; $(BIN)/python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder --durations=30 || status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests (exit 5): failing" >&2; fi; exit $$status

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check adept pipeline jobs tests benchmarks

# The wheels the GPU machine's image lacks for benchmarks/gpu_check.py, into .whl/gpu/ (PyPI reachable; see
# benchmarks/README.md "On a GPU machine"); prints their size against the device call's 64 MiB.
gpu-wheels: install
	PYTHON=$(BIN)/python bash benchmarks/gpu_wheels.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
