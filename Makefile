# `make demo` and `make test` do everything on a fresh machine: they create the
# environment in .venv first when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# apt-get needs root: use sudo only when we are not root already.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Jupyter refuses to run as root unless told to (containers often are root).
AS_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: install chromium demo lab test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch and torchvision are resolved together by pip (see DESIGN.md).
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Browser tests drive Debian's chromium (Playwright cannot download browsers here). Where
# there is no apt-get (macOS, say) they are skipped, except in CI, where they must run.
chromium:
	@test -x /usr/bin/chromium || ! command -v apt-get >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

demo: install
	$(BIN)/mlwidgets demo

# JupyterLab on notebooks/ (its root), opening the quick start; the kernel is .venv's Python.
# More options: make lab LAB_ARGS="--no-browser --port 8890"
lab: install
	$(BIN)/jupyter lab $(AS_ROOT) $(LAB_ARGS) notebooks/01-quickstart.ipynb

test: install chromium
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/export.py
	$(BIN)/python benchmarks/image_cache.py
	$(BIN)/python benchmarks/transfer.py
	$(BIN)/python benchmarks/ui.py
	$(BIN)/python benchmarks/understand.py
	$(BIN)/python benchmarks/commits.py
	$(BIN)/python benchmarks/scale.py

lint: install
	$(BIN)/ruff check mlwidgets tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
