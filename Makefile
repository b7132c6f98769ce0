# The README's two commands are `make demo` and `make test`; the rest are their steps.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

PIP    := $(BIN)/python -m pip --disable-pip-version-check --quiet

.PHONY: demo test lint bench venv clean docker images lock fresh-check

# The virtual env: exactly requirements/dev.lock (every version pinned, every file checked
# against its hash; nothing is resolved), then the project itself, editable, built with the
# locked setuptools. Redone when the lock or pyproject.toml changes.
$(STAMP): requirements/dev.lock pyproject.toml
	@echo "venv: installing requirements/dev.lock into $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP) install --require-hashes --requirement requirements/dev.lock
	@$(PIP) install --no-deps --no-build-isolation --editable .
	@touch $@

venv: $(STAMP)

# The one way to move dependency versions: re-resolves the lock files whose inputs changed
# (pyproject.toml, requirements/tools.in, runtimes/*/requirements*.in), keeping current pins
# where they still fit; UPGRADE=1 moves every pin to the newest version allowed.
lock: $(STAMP)
	$(BIN)/python scripts/lock $(if $(UPGRADE),--upgrade)

# From nothing, as on a new machine: removes this project's images, build cache and venv (and
# nothing else), then `make demo` and `make test` in a clean clone of HEAD, timing each step.
fresh-check:
	scripts/fresh-check

# Sets everything up on a machine with (or without) Docker, deploys the churn model from this
# repository's manifests and prints its URL and a real V1 and V2 prediction.
demo: $(STAMP)
	scripts/demo

lint: $(STAMP)
	$(BIN)/ruff check reconciler tests bench runtimes scripts/lock
	$(BIN)/ruff format --check reconciler tests bench runtimes scripts/lock
	$(BIN)/lint-imports

# A Docker engine (started, or installed, when missing) and the tiny image engine tests use.
docker:
	scripts/ensure-docker
	scripts/build-test-image

# The model runtime image (built offline; cached) and the churn models it serves.
images: docker
	scripts/build-images

test: lint images
	RELAY_FUZZ=thorough $(BIN)/python -m pytest

bench: $(STAMP) images
	$(BIN)/python bench/validate_1000.py 1000
	$(BIN)/python bench/reconcile_vs_compose.py 100
	$(BIN)/python bench/inference_latency.py
	$(BIN)/python bench/autoscale.py
	$(BIN)/python bench/dashboard.py 200

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
