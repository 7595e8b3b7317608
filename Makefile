# One setup path: a virtual environment at .venv/ with the project, its server extra and its dev extra installed.
# `make test` installs what is missing and runs the whole suite with coverage (CI runs exactly this).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU wheel on dev/CI machines; set TORCH= (empty) to let pip pick a build for your accelerator.
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=
COV_FAIL_UNDER ?= 85

.PHONY: install lint format test test-fast serve clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH),$(PY) -m pip install --quiet "$(TORCH)")
	$(PY) -m pip install --quiet -e ".[server,dev]"
	touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m serve_app.config_reference --check

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install
	$(PY) -m pytest --cov --cov-report=term --cov-fail-under=$(COV_FAIL_UNDER) $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not ray and not slow" $(PYTEST_ARGS)

serve: install
	$(VENV)/bin/serve run serve_config.yaml

clean:
	rm -rf $(VENV) .pytest_cache .coverage .coverage.* htmlcov
