# Quickstart: `make demo` records a synthetic room; `make test` runs the tests.
# Both set up what they need first (system packages, the venv); again, quickly.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# Real receivers the tests stream to (nginx-rtmp, stunnel for RTMPS).
TEST_PACKAGES := nginx-light libnginx-mod-rtmp stunnel4 openssl iproute2

.PHONY: setup system test-system demo test test-docker bench snapshots clean

setup: system $(VENV)/.installed

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

test: setup test-system
	$(PY) -m pytest -q

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
	rm -rf $(VENV) recordings .pytest_cache
