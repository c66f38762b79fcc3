# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo serve test lint bench corpus calibrate clean upgrade-lock

# Every install takes the exact versions in constraints.txt, the set the tests passed with.
# `make upgrade-lock` re-resolves to the newest releases pyproject allows and runs the tests on them.
LOCK := constraints.txt

$(STAMP): pyproject.toml client/pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch where this machine has one at hand (the lock's version); else from the index.
	$(PY) -m pip install -q -c $(LOCK) torch
	$(PY) -m pip install -q -c $(LOCK) -e ".[dev]" -e "./client[hf,accelerate,pandas]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiment $(ARGS)

# A labelled corpus from the project's own experiment, the alarm threshold and its held-out record
# (recipe: docs/risk_model.md).
CALIBRATION_DIR ?= $(HOME)/.cache/forgetwatch/calibration
# Four model families (architecture, size 0.15-10.7 M and tokenizer differ) over two skill pairs, every
# arm at learning rates from safe to forgetting, checkpoints at steps 2, 4, 6, 8 and every 10 steps,
# 256 ood probe items (labels: 256 other held-out items), three seeds. The service analyses only the
# probes (FORGETWATCH_ANALYSES=probes: the record reads nothing else). The lines (and seeds) are
# independent: run them one after another, or side by side against one `forgetwatch serve` started with
# FORGETWATCH_ANALYSES=probes, with --url/--token (docs/risk_model.md says how the shipped build was run).
# The shipped records (sixth build, 179 runs) add seeds 3 4 of the two character-family lines and seed 3
# of the Llama line to these (CORPUS_SEEDS="3 4" on those lines; docs/risk_model.md).
# `python -m bench.risk_heldout --save-records bench/corpus/records.json.gz` then stores what the
# record is computed from, and `forgetwatch calibrate --from-scratch --records bench/corpus/records.json.gz
# --out service/shipped_calibration.json` ships the threshold.
CORPUS = FORGETWATCH_DATA_DIR=$(CALIBRATION_DIR) FORGETWATCH_ANALYSES=probes $(PY) -m experiment \
	--checkpoint-every 10 --first-checkpoints 2 4 6 8 --ood-probe-items 256
ALL_ARMS = --arms sft grpo self_distillation_frozen self_distillation_ema
THREE_ARMS = --arms sft grpo self_distillation_ema
CORPUS_SEEDS ?= 0 1 2
corpus: $(STAMP)
	$(CORPUS) $(ALL_ARMS) --lr-scales 0.1 1 --seeds $(CORPUS_SEEDS) --steps 200 --family tiny-gpt2-char --skills add-letters
	$(CORPUS) $(ALL_ARMS) --lr-scales 0.3 3 --seeds $(CORPUS_SEEDS) --steps 200 --family tiny-gpt2-char --skills add-letters
	$(CORPUS) $(THREE_ARMS) --lr-scales 0.1 0.3 3 --seeds $(CORPUS_SEEDS) --steps 150 --family micro-qwen2-char --skills add-letters
	$(CORPUS) $(THREE_ARMS) --lr-scales 0.1 0.3 3 --seeds $(CORPUS_SEEDS) --steps 150 --family small-llama-word --skills reverse-between
	$(CORPUS) $(THREE_ARMS) --lr-scales 0.3 3 --seeds $(CORPUS_SEEDS) --steps 120 --family medium-gpt2-word --skills reverse-between

calibrate: $(STAMP)
	FORGETWATCH_DATA_DIR=$(CALIBRATION_DIR) $(VENV)/bin/forgetwatch calibrate
	FORGETWATCH_DATA_DIR=$(CALIBRATION_DIR) $(PY) -m bench.risk_heldout

serve: $(STAMP)
	$(VENV)/bin/forgetwatch serve

# The suite in TEST_PROCESSES processes, a test file per process at a time (its module fixtures start
# once): on 2 cores 2 processes halve its time (20.6 -> 10.6 min), since most tests wait on servers and
# subprocesses. TEST_PROCESSES=0 runs it in one process.
TEST_PROCESSES ?= 2
test: $(STAMP)
	bash scripts/test-tools.sh
	$(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

# A fresh venv with the newest allowed releases, frozen into the lock, then the tests on it.
# torch is upgraded on purpose only (TORCH=torch==X.Y.Z): a plain `torch` pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
upgrade-lock:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --upgrade -e ".[dev]" -e "./client[hf,accelerate,pandas]"
	{ echo "# Exact versions every 'make' install uses (pip -c). Regenerate with 'make upgrade-lock'."; \
	  $(PY) -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/'; } > $(LOCK)
	touch $(STAMP)
	$(MAKE) test

# ruff everywhere; mypy strict on drift/ and service/db/ (its settings: pyproject.toml [tool.mypy]).
lint: $(STAMP)
	$(VENV)/bin/ruff check drift service client experiment tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV)
