# One command each: `make test` runs the test suite, `make demo` the end-to-end demo.
# Both create .venv on first use and install what they need (torch 2.13.0 CPU first, so
# that no CUDA build is pulled in).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.geofm-installed
PYTEST_ARGS ?=

.PHONY: venv test demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/geofm demo --out outputs/demo

bench: $(STAMP)
	$(PY) bench/model.py

clean:
	rm -rf outputs build .pytest_cache
