# fedcifar: `make run` trains the paper configuration and serves it, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# PRESET=auto: `paper` (ResNet-18) with a CUDA GPU, else `paper-cpu` (ResNet-20), said in one line at
# start. RUN_DIR empty: runs/<the preset trained>, so the two never share a run directory.
PRESET ?= auto
RUN_DIR ?=

.PHONY: run test lint install install-dev clean browser-deps docker-deps docker-image test-docker

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,flower,tensorboard]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Trains $(PRESET) into $(RUN_DIR) (resuming it if it exists) and serves the upload page and
# live dashboard on http://127.0.0.1:8000 at once; Ctrl-C stops both.
run: install
	$(BIN)/fedcifar serve $(if $(RUN_DIR),--run $(RUN_DIR)) --train-preset $(PRESET) --host 127.0.0.1 --port 8000

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Needs: sudo for apt to install Chromium and ChromeDriver (browser-deps), the network for pip to
# install Flower and Ray (the flower extra, with dev and tensorboard), and CIFAR-100 in
# $FEDCIFAR_DATA_DIR (the directory that holds cifar-100-python/).
test: lint browser-deps
	$(BIN)/python -m pytest

# Debian's Chromium and ChromeDriver for tests/test_browser.py (CI starts on a fresh machine).
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# podman (with runc), podman-compose and debootstrap: no Docker engine runs here.
docker-deps:
	@command -v podman >/dev/null && command -v podman-compose >/dev/null && command -v runc >/dev/null \
	  && command -v debootstrap >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman podman-compose runc debootstrap >/dev/null; }

docker-image: install docker-deps
	docker/build-image.sh localhost/fedcifar:latest

# Builds the image, runs fl-training (smoke preset) and fl-webapp with podman-compose, posts a
# real CIFAR-100 test image to the web app, then removes everything it made but its caches.
# Then compose.federation.yaml: the image with Flower, a SuperLink, 2 SuperNodes (one shard
# each), 1 round of a tiny config, and its model served by fl-webapp.
test-docker: install docker-deps
	docker/test-docker.sh
	docker/test-federation.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
