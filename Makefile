# `make demo` and `make test` do everything on a fresh machine: they create the
# environment in .venv first when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# apt-get needs root: use sudo only when we are not root already.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch and torchvision are resolved together by pip (see DESIGN.md).
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# Browser tests drive Debian's chromium (Playwright cannot download browsers here).
	test -x /usr/bin/chromium || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }
	touch $(STAMP)

demo: install
	$(BIN)/mlwidgets demo

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/export.py
	$(BIN)/python benchmarks/image_cache.py
	$(BIN)/python benchmarks/transfer.py
	$(BIN)/python benchmarks/ui.py

lint: install
	$(BIN)/ruff check mlwidgets tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
