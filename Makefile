# Quickstart: `make demo` records a synthetic room; `make test` runs the tests.
# Both set up what they need first (system packages, the venv); again, quickly.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# Real receivers the tests stream to (nginx-rtmp, stunnel for RTMPS).
TEST_PACKAGES := nginx-light libnginx-mod-rtmp stunnel4 openssl iproute2
# Azure Blob emulator for the storage tests, from npm into .tools/ (not global).
# 3.35.0: the last release that supports Debian 12's Node 18.
AZURITE_VERSION := 3.35.0
AZURITE := .tools/node_modules/.bin/azurite-blob
LIVEKIT_CLIENT := node_modules/livekit-client/dist/livekit-client.esm.mjs

.PHONY: setup system test-system demo test test-docker bench snapshots clean

setup: system $(VENV)/.installed $(LIVEKIT_CLIENT)

system:
	@scripts/setup-system.sh

test-system:
	@scripts/setup-system.sh $(TEST_PACKAGES)

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: setup
	$(PY) -m compositor record --room synthetic --layout default --duration 10 -o recordings/demo.mp4
	@echo "demo recording: $(CURDIR)/recordings/demo.mp4"

test: setup test-system $(AZURITE)
	$(PY) -m pytest -q

# npm only if missing: a machine with Node from elsewhere keeps its own.
NPM := command -v npm >/dev/null || scripts/setup-system.sh nodejs npm

# What layout pages load from npm (package.json, pinned in package-lock.json).
$(LIVEKIT_CLIENT): package.json package-lock.json
	@$(NPM)
	npm ci --no-audit --no-fund
	@touch $@

$(AZURITE):
	@$(NPM)
	npm install --prefix .tools --no-audit --no-fund --save-exact azurite@$(AZURITE_VERSION)
	@touch $@

# Builds docker/Dockerfile with podman and records a room in the container.
test-docker: setup
	scripts/docker-test.sh

bench: setup test-system
	$(PY) bench/record.py
	$(PY) bench/api.py
	$(PY) bench/outputs.py

# The README's pictures of the built-in layouts, made by `compositor layouts snapshot`.
SNAP := $(PY) -m compositor layouts snapshot --names
snapshots: setup
	$(SNAP) grid --participants 2 -o docs/layouts/grid-2.png
	$(SNAP) grid --participants 5 -o docs/layouts/grid-5.png
	$(SNAP) grid --participants 9 -o docs/layouts/grid-9.png
	$(SNAP) speaker --participants 4 -o docs/layouts/speaker.png
	$(SNAP) pip --participant name=Ada,screenshare=0-60 --participant name=Grace,speaks= -o docs/layouts/pip-share.png
	$(SNAP) audio-only --participants 4 -o docs/layouts/audio-only.png

clean:
	rm -rf $(VENV) recordings .pytest_cache .tools node_modules
