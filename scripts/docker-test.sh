#!/usr/bin/env bash
# Builds docker/Dockerfile with podman (no Docker engine runs here) on a
# locally made Debian base, then runs the container tests against the image.
# Podman needs runc and raised default ulimits on these machines; its
# storage lives under $COMPOSITOR_PODMAN_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-system.sh podman buildah debootstrap runc uidmap
STATE=${COMPOSITOR_PODMAN_DIR:-/var/tmp/compositor-podman}
mkdir -p "$STATE"
cat > "$STATE/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$STATE/containers.conf"
export PODMAN="podman --root $STATE/root --runroot $STATE/run"
export COMPOSITOR_IMAGE=${COMPOSITOR_IMAGE:-localhost/compositor:test}

scripts/docker-base.sh debian:bookworm-slim
start=$(date +%s)
# pip inside the build trusts what this machine trusts (it may sit behind a TLS-inspecting proxy).
CA=/etc/ssl/certs/ca-certificates.crt
$PODMAN build --pull=never --format docker -t "$COMPOSITOR_IMAGE" -f docker/Dockerfile \
  --volume "$CA:/run/build-ca.crt:ro" --build-arg PIP_CERT=/run/build-ca.crt . >"$STATE/build.log" 2>&1 \
  || { tail -40 "$STATE/build.log"; exit 1; }
size=$($PODMAN image inspect --format '{{.Size}}' "$COMPOSITOR_IMAGE")
echo "built $COMPOSITOR_IMAGE in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB"
.venv/bin/python -m pytest -q -m docker tests/test_docker.py
