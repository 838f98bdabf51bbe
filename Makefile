# One-command set-up: `make run` and `make test` create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles from source; the native build crashes on some CPUs.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test test-slow lint typecheck bench install install-test chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Stamps re-run the install whenever pyproject.toml changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[local]"
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[local,test,bench]"
	touch $@ $(VENV)/.installed-run

install: $(VENV)/.installed-run
install-test: $(VENV)/.installed-test

# Debian's Chromium for the browser tests (Playwright drives it; no browser download),
# a CJK font so the built-in Chinese characters render in screenshots, and tmux for the
# terminal chat's tests (tests/test_cli_terminal.py).
chromium:
	@if [ ! -x /usr/bin/chromium ] || ! command -v tmux >/dev/null \
			|| ! fc-list 2>/dev/null | grep -qi wqy; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			chromium fonts-wqy-microhei tmux; \
	fi

run: install
	$(BIN)/chatmem serve

test: install-test chromium
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck:
	$(BIN)/mypy

bench: install-test
	$(BIN)/python bench/memory_bench.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
