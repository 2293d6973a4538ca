# xrdid — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 resolves to the local CPU build on this project's machines; elsewhere pass
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to avoid the CUDA wheels on a CPU-only box.
TORCH_INDEX ?=
PYTEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help venv run repro test test-fast bench rruff236 rruff mp dara coremof ui clean metrics plots

help: ## show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -c requirements.lock -e ".[dev]"
	touch $@

venv: $(VENV)/.installed ## create .venv with the pinned dependencies

run: venv ## run the whole pipeline (dvc repro) on the embedded default, push data to the DVC remote
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/dvc push -q

repro: run

# The many-worker Optuna test needs PostgreSQL: a set XRDID_TEST_POSTGRES_URL is used as it is, else
# scripts/postgres.sh starts the local server (installing it if missing) and prints its URL. The report
# and `xrdid ui` tests render in headless Chromium: scripts/chromium.sh installs Debian's package if missing.
test: venv ## run the test suite (starts the local PostgreSQL for the many-worker Optuna test, installs Chromium)
	@scripts/chromium.sh >/dev/null
	url="$${XRDID_TEST_POSTGRES_URL:-$$(scripts/postgres.sh)}" && \
	XRDID_TEST_POSTGRES_URL="$$url" $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -q

test-fast: venv ## run the tests not marked slow (with the local PostgreSQL too)
	@scripts/chromium.sh >/dev/null
	url="$${XRDID_TEST_POSTGRES_URL:-$$(scripts/postgres.sh)}" && \
	XRDID_TEST_POSTGRES_URL="$$url" $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -q -m "not slow"

.PHONY: postgres
postgres: ## start the local PostgreSQL (scripts/postgres.sh: .postgres/, port 55432) and print its URL
	@scripts/postgres.sh

bench: venv ## run the benchmarks (ratios against references measured in the same run)
	$(BIN)/python benchmarks/simulate.py
	$(BIN)/python benchmarks/augment.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/synthetic.py
	$(BIN)/python benchmarks/predict.py

# One table per folder instead of `dvc metrics show` (a column per key of every metrics.json);
# stdlib only, so no venv is needed.
metrics: ## print Top-1..5 of the default pipeline and each profile run so far (rows: methods, columns: k)
	@$(PYTHON) scripts/metrics_table.py

# dvc plots show says only "failed to load some plots" for a profile not run yet: name it first.
PLOTS_OUT ?= dvc_plots
plots: venv ## write the Top-k plots of the default pipeline and each profile to dvc_plots/index.html
	@$(PYTHON) scripts/metrics_table.py --absent plots/topk.csv
	$(BIN)/dvc plots show -o $(PLOTS_OUT)

MLFLOW_PORT ?= 5000
ui: venv ## open the MLflow UI on the tracking store (sqlite:///mlruns/mlflow.db) at http://127.0.0.1:5000 (MLFLOW_PORT=...)
	$(BIN)/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///mlruns/mlflow.db}" --host 127.0.0.1 --port $(MLFLOW_PORT)

clean: ## remove pipeline outputs (keeps .venv and the DVC cache)
	rm -rf data/library data/patterns data/noise_bank data/augmented

rruff236: venv ## run the RRUFF-236 profile (needs ../shared/data): real noise, 118 measured test patterns
	cd pipelines/rruff236 && PATH="$(CURDIR)/$(BIN):$$PATH" ../../$(BIN)/dvc repro

rruff: rruff236 ## alias of rruff236

mp: venv ## run the MP profile (needs ../shared/data): open-library identifier among 25,236 entries, 118 measured tests
	cd pipelines/mp && PATH="$(CURDIR)/$(BIN):$$PATH" ../../$(BIN)/dvc repro

dara: venv ## run the Dara profile (needs ../shared/data): every phase of 100 measured mixture scans, 297 MP entries
	cd pipelines/dara && PATH="$(CURDIR)/$(BIN):$$PATH" ../../$(BIN)/dvc repro

coremof: venv ## run the CoRE MOF profile: open-library identifier among all 12,020 CoRE MOF 2019-ASR entries
	cd pipelines/coremof && PATH="$(CURDIR)/$(BIN):$$PATH" ../../$(BIN)/dvc repro
