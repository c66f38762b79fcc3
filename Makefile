# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo serve test lint bench calibrate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# A CPU build of torch when this machine has one at hand; elsewhere pyproject's range applies.
	-$(PY) -m pip install -q "torch==2.13.0" 2>/dev/null
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/forgetwatch experiment

# Refit the shipped risk model from the project's own experiment (recipe: docs/risk_model.md).
CALIBRATION_DIR ?= $(HOME)/.cache/forgetwatch/calibration
calibrate: $(STAMP)
	FORGETWATCH_DATA_DIR=$(CALIBRATION_DIR) $(VENV)/bin/forgetwatch experiment --seeds 0 1 2 3 --lr-scales 0.5 1 2
	FORGETWATCH_DATA_DIR=$(CALIBRATION_DIR) $(VENV)/bin/forgetwatch calibrate --out service/risk_model.json

serve: $(STAMP)
	$(VENV)/bin/forgetwatch serve

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check drift service tests bench

clean:
	rm -rf $(VENV)
