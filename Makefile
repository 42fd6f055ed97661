# Quickstart: `make demo` records a synthetic room; `make test` runs the tests.
# Both set up what they need first (system packages, the venv); again, quickly.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# Real receivers the tests stream to (nginx-rtmp, stunnel for RTMPS); the cluster's Redis.
TEST_PACKAGES := nginx-light libnginx-mod-rtmp stunnel4 openssl iproute2 redis-server
# Azure Blob emulator for the storage tests, from npm into .tools/ (not global).
# 3.35.0: the last release that supports Debian 12's Node 18.
AZURITE_VERSION := 3.35.0
AZURITE := .tools/node_modules/.bin/azurite-blob
# livekit-client's bundle, from npm, vendored into the package's assets (package data; not in git).
NPM_LIVEKIT_CLIENT := node_modules/livekit-client/dist/livekit-client.esm.mjs
LIVEKIT_CLIENT := compositor/assets/vendor/livekit-client.esm.mjs
# LiveKit room tests: a real livekit-server, publishers (tools/lkpub, on LiveKit's Go server SDK, pinned in
# its go.mod) and a caller of the unified StartEgress (tools/lkegress, on the SDK that first sends it), built
# with Go into .tools/bin. Without Go they are skipped, saying why.
LIVEKIT_SERVER_VERSION := v1.13.5
LIVEKIT_SERVER := .tools/bin/livekit-server
LKPUB := .tools/bin/lkpub
LKEGRESS := .tools/bin/lkegress
LIVEKIT_TOOLS := $(if $(shell command -v go),$(LIVEKIT_SERVER) $(LKPUB) $(LKEGRESS),no-go)

.PHONY: setup system test-system demo test test-docker bench snapshots clean livekit-tools no-go

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

test: setup test-system $(AZURITE) $(LIVEKIT_TOOLS)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

livekit-tools: $(LIVEKIT_SERVER) $(LKPUB) $(LKEGRESS)

no-go:
	@echo "Go is not installed: the LiveKit room tests will be skipped. Get Go 1.22+ (https://go.dev/dl/" \
	      "or apt install golang-go on Debian 13+), then run make livekit-tools."

$(LIVEKIT_SERVER):
	@mkdir -p .tools/gobin .tools/bin
	GOBIN=$(CURDIR)/.tools/gobin go install github.com/livekit/livekit-server/cmd/server@$(LIVEKIT_SERVER_VERSION)
	mv .tools/gobin/server $@

$(LKPUB): tools/lkpub/main.go tools/lkpub/go.mod tools/lkpub/go.sum
	@mkdir -p .tools/bin
	cd tools/lkpub && GOBIN=$(CURDIR)/.tools/bin go install -buildvcs=false .

$(LKEGRESS): tools/lkegress/main.go tools/lkegress/go.mod tools/lkegress/go.sum
	@mkdir -p .tools/bin
	cd tools/lkegress && GOBIN=$(CURDIR)/.tools/bin go install -buildvcs=false .

# npm only if missing: a machine with Node from elsewhere keeps its own.
NPM := command -v npm >/dev/null || scripts/setup-system.sh nodejs npm

# What layout pages load from npm (package.json, pinned in package-lock.json).
$(NPM_LIVEKIT_CLIENT): package.json package-lock.json
	@$(NPM)
	npm ci --no-audit --no-fund
	@touch $@

$(LIVEKIT_CLIENT): $(NPM_LIVEKIT_CLIENT)
	@mkdir -p $(dir $@)
	cp $< $@

$(AZURITE):
	@$(NPM)
	npm install --prefix .tools --no-audit --no-fund --save-exact azurite@$(AZURITE_VERSION)
	@touch $@

# Builds docker/Dockerfile with podman and records a room in the container.
test-docker: setup
	scripts/docker-test.sh

bench: setup test-system $(LIVEKIT_TOOLS)
	$(PY) bench/record.py
	$(PY) bench/api.py
	$(PY) bench/outputs.py
	$(PY) bench/rooms.py
	$(PY) bench/cluster.py
	$(PY) bench/ingress.py

# The README's pictures of the built-in layouts, made by `compositor layouts snapshot` (names are on by default),
# and of the dashboard's pages (a real `compositor serve`, in Chromium).
SNAP := $(PY) -m compositor layouts snapshot
snapshots: setup
	$(SNAP) grid --participants 2 -o docs/layouts/grid-2.png
	$(SNAP) grid --participants 5 -o docs/layouts/grid-5.png
	$(SNAP) grid --participants 9 -o docs/layouts/grid-9.png
	$(SNAP) speaker --participants 4 -o docs/layouts/speaker.png
	$(SNAP) pip --participant name=Ada,screenshare=0-60 --participant name=Grace,speaks= -o docs/layouts/pip-share.png
	$(SNAP) audio-only --participants 4 -o docs/layouts/audio-only.png
	$(SNAP) grid --at 3 --participant 'name=Ada Lovelace' --participant name=Grace,tone=0,speaks= \
	  --participant name=Linus,video=off,speaks= --participant name=Margaret,speaks=,freezes=0-60 \
	  -o docs/layouts/grid-states.png
	$(SNAP) grid-light --participants 4 -o docs/layouts/grid-light.png
	$(PY) scripts/dashboard-screenshots.py docs/dashboard

clean:
	rm -rf $(VENV) recordings .pytest_cache .tools node_modules
