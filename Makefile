# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
# Pinned and installed first: an unpinned torch pulls a multi-GB CUDA build. GPU users override it,
# e.g. `make test TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"`.
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
TB     := $(VENV)/bin/tb
STAMP  := $(VENV)/.tb-plugin-installed
DEMO   ?= runs/demo

.PHONY: setup lint format test demo demo-pipeline clean-demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e ".[dev,deploy]"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q

# Style checks, run by .ci/run before the tests (a few seconds): lint, formatting, spelling.
# `make format` applies ruff's fixes and formatting.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/codespell

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The main job on the built-in simulated data (pile-up 10): the A/B of the demo pipeline (the baseline
# arm) against the same pipeline with TrackingBERT features (pretrained) and with the untrained model's
# (random: the control that separates what pretraining learned from a code per module), 3 seeds each,
# on the events that data reading writes first. The baseline arm's seed-0 stages are the demo's trained
# pipeline (what configs/pipelines/demo_on_real.yaml applies to real files). The A/B's stages run in 2
# one-thread worker processes (`jobs: 2` in configs/ab/demo.yaml): on 2 cores, two one-thread processes
# finish sooner than one two-thread process (benchmarks/README.md). Everything goes under $(DEMO)/
# (ignored by git).
demo: setup
	$(TB) simulate --events 400 --pileup 10 --seed 1 --first-event 1000 --out $(DEMO)/simulated
	$(TB) infer configs/data_reading/simulated.yaml
	$(TB) ab configs/ab/demo.yaml

# The demo pipeline at full size, after `make demo` (it reads the demo's events): the GNN of hidden 64
# trained 20 epochs where the A/B's is 32 wide and trained 6; about 5 minutes on 2 cores. Each stage
# writes $(DEMO)/<stage>/, where the stage configs in configs/ point (tb train/infer/eval CONFIG.yaml).
demo-pipeline: setup
	$(TB) run configs/pipelines/demo_baseline.yaml

clean-demo:
	rm -rf $(DEMO)
