# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON ?= python3

.PHONY: demo test lint bench clean

# torch first and pinned: on these machines 2.13.0 is a local CPU wheel; a bare `torch`
# would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The hand-built attention demo (seconds), then every lab experiment at quick size (<= 10 min on 2 cores).
demo: $(STAMP)
	$(VENV)/bin/crossfuse attention-demo --out runs/demo
	$(VENV)/bin/crossfuse lab --size quick

# Debian's chromium for the explorer's browser test (tests/test_explorer_browser.py); never `playwright install`.
# Needs root for apt-get; if it cannot be installed the browser test skips and says why.
.PHONY: browser
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium) \
		|| echo "make browser: could not install chromium (needs root and apt); the browser test will be skipped"

test: $(STAMP) browser
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples

bench: $(STAMP)
	$(PY) benchmarks/attention.py
	$(PY) benchmarks/fusion.py
	$(PY) benchmarks/decode.py

clean:
	rm -rf $(VENV) runs .pytest_cache
