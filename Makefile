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

.PHONY: setup lint format test demo demo-pipeline demo-ab clean-demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e ".[dev]"
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

# The main job on the built-in simulated data (pile-up 10): the baseline pipeline and the A/B against the
# same pipeline with TrackingBERT features. Everything goes under $(DEMO)/ (ignored by git). Both read the
# events that data reading writes first; then they run side by side, one thread per process (the A/B's
# stages in 2 worker processes, `jobs: 2` in configs/ab/demo.yaml): on 2 cores, two one-thread processes
# finish sooner than one two-thread process (benchmarks/README.md). The pipeline's output goes to
# $(DEMO)/baseline_pipeline.log, the A/B's to the terminal.
demo: setup
	$(TB) simulate --events 400 --pileup 10 --seed 1 --first-event 1000 --out $(DEMO)/simulated
	$(TB) infer configs/data_reading/simulated.yaml
	@$(MAKE) --no-print-directory -j2 demo-pipeline demo-ab

demo-pipeline:
	@echo "demo: the baseline pipeline runs beside the A/B; its output: $(DEMO)/baseline_pipeline.log"
	@OMP_NUM_THREADS=1 $(TB) run configs/pipelines/demo_baseline.yaml > $(DEMO)/baseline_pipeline.log 2>&1 \
		|| (tail -n 20 $(DEMO)/baseline_pipeline.log; exit 1)
	@echo "demo: the baseline pipeline finished; per stage: $(DEMO)/<stage>/eval/metrics.json"

demo-ab:
	$(TB) ab configs/ab/demo.yaml

clean-demo:
	rm -rf $(DEMO)
