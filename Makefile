# The README's two commands are `make demo` and `make test`; the rest are their steps.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint bench venv clean docker

# A virtual env with the package (editable) and the test tools; rebuilt when pyproject changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/ruff format --check reconciler tests bench

# A Docker engine (started, or installed, when missing) and the tiny image engine tests use.
docker:
	scripts/ensure-docker
	scripts/build-test-image

test: lint docker
	$(BIN)/python -m pytest

bench: $(STAMP) docker
	$(BIN)/python bench/validate_1000.py 1000
	$(BIN)/python bench/reconcile_vs_compose.py 100

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
