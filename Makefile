# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo serve test lint bench corpus calibrate clean

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

# A labelled corpus from the project's own experiment, the alarm threshold and its held-out record
# (recipe: docs/risk_model.md).
CALIBRATION_DIR ?= $(HOME)/.cache/forgetwatch/calibration
corpus: $(STAMP)
	FORGETWATCH_DATA_DIR=$(CALIBRATION_DIR) $(VENV)/bin/forgetwatch experiment --seeds 0 1 --lr-scales 0.1 0.3 1 --checkpoint-every 20
	FORGETWATCH_DATA_DIR=$(CALIBRATION_DIR) $(VENV)/bin/forgetwatch experiment --seeds 2 3 4 5 --lr-scales 0.1 --checkpoint-every 20

calibrate: $(STAMP)
	FORGETWATCH_DATA_DIR=$(CALIBRATION_DIR) $(VENV)/bin/forgetwatch calibrate
	FORGETWATCH_DATA_DIR=$(CALIBRATION_DIR) $(PY) -m bench.risk_heldout

serve: $(STAMP)
	$(VENV)/bin/forgetwatch serve

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check drift service tests bench

clean:
	rm -rf $(VENV)
