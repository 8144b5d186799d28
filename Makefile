# distill-study: every entry point for people and CI. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch (2.13.0 lies on this machine's disk); GPU users: make setup TORCH_SPEC='torch==2.13.0' TORCH_INDEX='--index-url https://download.pytorch.org/whl/cu128'
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PROFILE ?= smollm2-135m_to_pruned20_cpu
CAPACITY_PROFILE ?= capacity_cpu
SIGNAL_PROFILE ?= signal_cpu
FOURBIT_PROFILE ?= fourbit_cpu
GEMMA_PROFILE ?= gemma3-270m_to_pruned12_cpu
# A seed sweep: SWEEP names the setting, SWEEP_ARGS changes it, e.g. SWEEP_ARGS='--set distill_positions=answer'
SWEEP ?= default
SEEDS ?= 0,1,2
SWEEP_ARGS ?=
# pytest processes for `make test` (pytest-xdist; tests marked xdist_group share one); the end-to-end tests run
# one torch thread each
TEST_WORKERS ?= 2
# The offline SQuAD copy beside this checkout, when there is one (else params squad_dir or the hub).
export SQUAD_DIR ?= $(wildcard $(abspath ../shared/data/squad))
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help setup browser test test-fast study sweep capacity signal signal20 fourbit fourbit-gemma gemma smoke status dag validate params lab notebooks bench-loss bench-step bench-processes bench-cache clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: PROFILE=$(PROFILE) (a params/*.yaml name), SQUAD_DIR=$(SQUAD_DIR)"

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "error: no python3.11 or python3 on PATH; install Python 3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX) '$(TORCH_SPEC)'
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

setup: $(VENV)/.installed ## create .venv with the pinned packages and the editable `distill` package

browser: ## Debian's chromium for the report tests (headless; installed when missing and we may use apt)
	@command -v chromium >/dev/null || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: no chromium; the report tests need it: sudo apt-get install -y chromium"; fi; }

test: setup browser ## run the whole test suite (unit tests, an end-to-end smoke study, its reports in Chromium)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

test-fast: setup ## the unit tests only (skips the end-to-end runs)
	$(PY) -m pytest -q -m "not slow"

study: setup ## bring the study for PROFILE up to date (dvc repro: only what changed runs) and render reports/<run>/
	$(PY) -m distill run params/$(PROFILE).yaml

sweep: setup ## after `make study`: train and score the students over SEEDS; reports/<run>/sweeps/summary.txt
	$(PY) -m distill sweep params/$(PROFILE).yaml --name $(SWEEP) --seeds $(SEEDS) $(SWEEP_ARGS)

capacity: setup ## the capacity curve: students of 4 sizes x CE-only/distilled x 3 seeds on 300 questions (about 90 min); reports/capacity_cpu/04_capacity.html
	$(PY) -m distill run params/$(CAPACITY_PROFILE).yaml --only capacity-report

signal: setup ## the signal grid: which of the teacher's signals (teacher answers, every position, on-policy...) pays at 24 and 16 layers; reports/signal_cpu/05_signal.html
	$(PY) -m distill run params/$(SIGNAL_PROFILE).yaml --only capacity-report

signal20: setup ## the signal grid at the default size (20 layers): 5 arms x 3 seeds on 300 questions (about 2 h 10 min); reports/signal20_cpu/05_signal.html
	$(PY) -m distill run params/signal20_cpu.yaml --only capacity-report

fourbit: setup ## what a 4-bit (NF4) teacher costs: its fidelity to float32 and the students it teaches; reports/fourbit_cpu/06_fourbit.html
	$(PY) -m distill run params/$(FOURBIT_PROFILE).yaml --only fourbit-report

fourbit-gemma: setup ## the Gemma 3 teacher's fidelity in NF4 against float32 (no students); reports/gemma3-270m_to_pruned12_cpu/06_fourbit.html
	$(PY) -m distill run params/$(GEMMA_PROFILE).yaml --only fourbit-report

gemma: setup ## the Gemma family offline: Gemma 3 270M (real weights, 262k words) tuned, cut to 12 layers, distilled; reports/gemma3-270m_to_pruned12_cpu/
	$(PY) -m distill run params/$(GEMMA_PROFILE).yaml

smoke: setup ## the whole study on tiny models (3 to 5 minutes): reports/smoke/
	$(PY) -m distill run params/smoke.yaml

status: setup ## what is out of date in PROFILE's pipeline, and why (dvc status)
	$(PY) -m distill status params/$(PROFILE).yaml

dag: setup ## the stages of PROFILE's pipeline and what feeds what (dvc dag)
	$(PY) -m distill dag params/$(PROFILE).yaml

validate: setup ## only validate params/$(PROFILE).yaml
	$(PY) -m distill validate params/$(PROFILE).yaml

params: setup ## list every params key with its type, default and meaning
	$(PY) -m distill params

lab: notebooks ## open the notebooks in JupyterLab, kernel = .venv's Python (installs jupyterlab into .venv on first use)
	$(PY) -m pip install -q -c constraints.txt jupyterlab
	cd notebooks && ../$(PY) -m jupyter lab

# kernel "python3", as the runner names it: Jupyter starts it with its own interpreter (.venv's, for
# .venv/bin/papermill and `make lab`). `--set-kernel -` wanted a kernelspec whose argv[0] is this python's
# absolute path; ipykernel's python3 spec says plain `python`, so it failed on every fresh .venv.
notebooks: setup ## generate the paired .ipynb files from notebooks/*.py (they are not committed)
	$(PY) -m jupytext --set-kernel python3 --sync notebooks/*.py

bench-loss: setup ## memory and speed of the KD loss at Gemma's 256k vocabulary: whole, chunked, from a sampled cache (LOSS_PROFILE=<profile>: its real vocabulary)
	$(PY) benchmarks/kd_loss_memory.py $(if $(LOSS_PROFILE),params/$(LOSS_PROFILE).yaml)

bench-step: setup ## cost of a distillation step (live teacher, cached sparse teacher) vs a CE step on PROFILE's models
	$(PY) benchmarks/step_cost.py params/$(PROFILE).yaml

bench-processes: setup ## one distillation step on 2 processes x 1 thread vs 1 process x 2 threads (same global batch) on PROFILE's run
	$(PY) benchmarks/process_step.py params/$(PROFILE).yaml --processes 2 --threads 1

bench-cache: setup ## peak memory of the teacher-cache fill with and without giving freed logits back to the system, on PROFILE's tuned teacher
	$(PY) benchmarks/cache_memory.py params/$(PROFILE).yaml

clean: ## remove the runs' artifacts and the smoke report and pipeline (keeps .venv, the model cache and .dvc/cache)
	rm -rf artifacts reports/smoke pipelines/smoke
