# Two commands: `make demo` and `make test`. Both create .venv and install the lock first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.carve-installed
CORES  ?= all
# Extra pip arguments, e.g. PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu" for a CPU-only torch.
PIP_ARGS ?=

.PHONY: setup demo test lint unit e2e lock clean config-doc

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "carve needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP_ARGS) -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml
	@echo "Demo done: metrics in results/demo/metrics/summary.tsv, meshes in results/demo/meshes/"

lint: setup
	$(BIN)/ruff check src tests workflow bench
	$(BIN)/ruff format --check src tests workflow bench
	$(BIN)/snakemake --lint --configfile config/config.yaml

test: setup lint
	$(BIN)/python -m pytest -q --durations=25 tests  # the slowest 25 in the log: keep make test near 30 minutes

unit: setup
	$(BIN)/python -m pytest -q tests/unit

e2e: setup
	$(BIN)/python -m pytest -q tests/e2e

# config/README.md from the config schema (a unit test checks they agree).
config-doc: setup
	$(BIN)/python -m carve.pipeline.config_doc

# Re-resolve requirements.in into the exact lock (torch's local version suffix is dropped).
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet $(PIP_ARGS) -r requirements.in
	.lockenv/bin/pip freeze --exclude-editable | sed 's/+cpu$$//' > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf results .snakemake
