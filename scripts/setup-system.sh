#!/usr/bin/env bash
# Installs the system packages the pipeline needs (Debian 12 / Ubuntu), only
# those missing, so a second run is quick. Used by `make`, CI and the image.
set -euo pipefail

# libatomic1: Playwright's bundled node driver needs it (a minimal Debian lacks it).
PACKAGES=(
  ffmpeg chromium xvfb pulseaudio fonts-dejavu-core libatomic1
  python3-venv python3-pip
)
# Extra packages a caller may ask for (e.g. test receivers): setup-system.sh nginx-light ...
PACKAGES+=("$@")

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Packages such as nginx would start their daemon on install (listening on
# port 80 of every address); tests start their own on 127.0.0.1 instead.
# policy-rc.d answering 101 tells Debian's maintainer scripts not to start services.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod +x "$POLICY"
  trap '$SUDO rm -f "$POLICY"' EXIT
fi
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
