# The README's two commands are `make demo` and `make test`; the rest are their steps.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench venv clean docker images

# A virtual env with the package (editable) and the test tools; rebuilt when pyproject changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

venv: $(STAMP)

# Sets everything up on a machine with (or without) Docker, deploys the churn model from this
# repository's manifests and prints its URL and a real V1 and V2 prediction.
demo: $(STAMP)
	scripts/demo

lint: $(STAMP)
	$(BIN)/ruff check reconciler tests bench runtimes
	$(BIN)/ruff format --check reconciler tests bench runtimes

# A Docker engine (started, or installed, when missing) and the tiny image engine tests use.
docker:
	scripts/ensure-docker
	scripts/build-test-image

# The model runtime image (built offline; cached) and the churn models it serves.
images: docker
	scripts/build-images

test: lint images
	$(BIN)/python -m pytest

bench: $(STAMP) images
	$(BIN)/python bench/validate_1000.py 1000
	$(BIN)/python bench/reconcile_vs_compose.py 100
	$(BIN)/python bench/inference_latency.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
