# The two-command contract: `make demo` and `make test` set up .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/orchestrator demo --workdir demo-run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Wire formats (nuwire/) must keep 100% line and branch coverage: OTP cannot be erased.
unit: $(STAMP)
	$(BIN)/pytest --cov --cov-report=term
	$(BIN)/coverage report --include='nuwire/*' --fail-under=100

test: lint typecheck unit

clean:
	rm -rf $(VENV) .coverage .mypy_cache .pytest_cache .ruff_cache .hypothesis
