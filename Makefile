# Two commands for a fresh machine: `make dev` (or `make run`) and `make test` (see README).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
export FLASK_APP := service

.PHONY: dev run run-lb test demo lint bench bench-production clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever a requirements file changes.
$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

dev: $(VENV)/.installed  ## web + forwarder + a local HighLevel stand-in (DEV_HL_PORT, 9100) on loopback, a ready location, on $(PORT)
	PORT=$(PORT) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/dev.py

run: $(VENV)/.installed  ## migrate, print the dev keys, start web + forwarder on $(PORT) (the real HighLevel)
	$(BIN)/flask db upgrade
	@$(BIN)/flask keys show
	PORT=$(PORT) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start web worker

run-lb: $(VENV)/.installed  ## HAProxy on $(PORT) in front of WEB_INSTANCES (2) gunicorns + a forwarder
	PORT=$(PORT) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/run_lb.py

# The import contracts first (pyproject.toml, [tool.importlinter]), then the suite with
# branch coverage; the floor is [tool.coverage.report] fail_under (add --no-cov to
# PYTEST_ARGS when running a part of the suite).
test: $(VENV)/.installed  ## import contracts, then the whole suite with branch coverage
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest --cov --cov-report=term:skip-covered $(PYTEST_ARGS)

demo: $(VENV)/.installed  ## the service against a local HighLevel stand-in
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

lint: $(VENV)/.installed
	$(BIN)/ruff check service tests bench config scripts

bench: $(VENV)/.installed
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/forward.py

bench-production: $(VENV)/.installed  ## vs bare Flask, vs an inline HighLevel call, a 10-min soak
	$(BIN)/python bench/compare.py
	$(BIN)/python bench/inline.py
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
