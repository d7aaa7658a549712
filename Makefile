# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch first (any other spec pulls a multi-GB CUDA build), then the project.
TORCH ?= torch==2.13.0

.PHONY: install demo test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[worker,dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/kandinsky-batch demo

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# Test modules run in 3 processes: the suite mostly waits on workers, leases and servers, not on the CPU.
test: lint
	$(PY) scripts/ensure_redis.py
	$(PY) -m pytest -n 3 --dist loadfile
