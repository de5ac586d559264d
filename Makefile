# noisydeq — the README's two set-up commands are `make run` and `make test`.
# Both create ./.venv on first use (local CPU torch 2.13.0, aihwkit 1.1.0 and torchattacks
# 3.5.1 without their torchvision requirement, Ray 2.60.0 for the --backend ray tests, noisydeq
# in editable mode with the dev extra)
# and reuse it after. pyproject.toml declares torch as a range and aihwkit/torchattacks as
# extras (rram, attacks); the exact CPU torch pin and the --no-deps installs live here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.noisydeq-installed
SWEEP_ARGS ?= --device rram --snr 0:30
PYTEST_ARGS ?=

.PHONY: run test lint bench clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps aihwkit==1.1.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps torchattacks==3.5.1
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --only-binary=ray ray==2.60.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/noisydeq sweep $(SWEEP_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check noisydeq tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean-venv:
	rm -rf $(VENV)
