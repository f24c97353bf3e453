# The two commands a new user needs: `make demo` and `make test`. Everything installs into .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
export GITOPSD_STATE_DIR ?= $(CURDIR)/$(DEMO_DIR)/state

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	tools/ensure-debs git=git
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/gitopsd init $(DEMO_DIR)/repo
	$(BIN)/gitopsd validate $(DEMO_DIR)/repo
	$(BIN)/gitopsd plan --repo $(DEMO_DIR)/repo
	$(BIN)/gitopsd reconcile --repo $(DEMO_DIR)/repo --wait
	$(BIN)/gitopsd status

test: $(STAMP)
	tools/ensure-debs git=git sqlite3=sqlite3
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check gitopsd tests bench
	$(BIN)/ruff format --check gitopsd tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/artifacts.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
