# resnetlab: `make run` is the main job, `make test` the full test suite.
# Both set themselves up: a virtual environment in .venv with the package and its tools.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-quick lint format clean

setup: $(STAMP)

# The page test of `serve` drives Debian's chromium (Playwright uses it; no browser download).
$(STAMP): pyproject.toml
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y chromium >/dev/null 2>&1 || \
	  (apt-get update >/dev/null && apt-get install -y chromium >/dev/null) || \
	  echo "Debian package chromium unavailable: the page test of serve will fail"; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

# The main job: get Fashion-MNIST (Debian's package where possible, else the official
# download), train a CIFAR-style ResNet with the fast preset, evaluate it.
RUN_DIR ?= runs/fashion_mnist_fast
run: setup
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y dataset-fashion-mnist >/dev/null 2>&1 || \
	  (apt-get update >/dev/null && apt-get install -y dataset-fashion-mnist >/dev/null) || \
	  echo "Debian package dataset-fashion-mnist unavailable: downloading instead"; fi
	$(BIN)/resnetlab train --config configs/fashion_mnist_fast.yaml --output $(RUN_DIR) --overwrite
	$(BIN)/resnetlab eval $(RUN_DIR) --data fashion-mnist
	@echo "report: $(RUN_DIR)/report.md  curves: $(RUN_DIR)/curves.png  confusion: $(RUN_DIR)/confusion-test.png"

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# The torchrun tests start process groups of their own: they run after the rest, alone.
test: lint
	$(BIN)/python -m pytest -n 2 -q -m "not distributed"
	$(BIN)/python -m pytest -q -m distributed

test-quick: setup
	$(BIN)/python -m pytest -q -m "not slow" -x

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
