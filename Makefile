# page4dgs: `make reconstruct` and `make test` are all a fresh clone needs; both install what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Torch for this machine. The default matches the wheels our CPU/CI machines hold offline; on a CUDA machine
# use e.g. TORCH_SPEC="torch torchvision" (any torch >= 2.1 works).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
SCENE ?= demo
CONFIG ?= auto
OUT ?=
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install reconstruct test bench bench-cpu bench-summary defaults clean help

help:
	@echo "make reconstruct [SCENE=demo] [OUT=runs/<name>] [CONFIG=auto] [ARGS=\"key=value ...\"]"
	@echo "make test | make bench | make bench-cpu | make bench-summary | make defaults | make clean"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e .
	$(PY) -m pipeline.assets
	@touch $@

reconstruct: install
	$(VENV)/bin/page4dgs reconstruct "$(SCENE)" --config "$(CONFIG)" $(if $(OUT),--out "$(OUT)") $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The benchmark suites (bench/run.py); each ends by regenerating bench/README.md from bench/results/.
bench: install
	$(PY) -m bench.run gpu; status=$$?; $(PY) -m bench.summarize; exit $$status

bench-cpu: install
	$(PY) -m bench.run cpu; status=$$?; $(PY) -m bench.summarize; exit $$status

bench-summary: install
	$(PY) -m bench.summarize

# Regenerate configs/default.yaml from the config dataclasses (a test checks that it is current).
defaults: install
	$(VENV)/bin/page4dgs config --defaults > configs/default.yaml

clean:
	rm -rf runs .pytest_cache
