# make demo : set up (torch, gatedrnn: what the demo needs), then compare every variant on scikit-learn's digits
# make test : set up with the test extras (interop, data, triton, keras, pytest...), then ruff and every test
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(TEST_STAMP)

# --overwrite: each `make demo` replaces the previous demo run in runs/demo (the old one stays until the new one is done)
demo: setup
	$(VENV)/bin/gatedrnn compare --out runs/demo --overwrite

test: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
