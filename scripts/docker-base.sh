#!/usr/bin/env bash
# Makes the Dockerfile's base image (debian:bookworm-slim) locally when no
# registry is reachable: debootstrap a minimal Debian 12 from the mirror apt
# already uses, and import it into podman under that name.
set -euo pipefail

IMAGE=${1:-debian:bookworm-slim}
: "${PODMAN:=podman}"
if $PODMAN image exists "$IMAGE"; then
  exit 0
fi
mirror=$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' \
  /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n1)
[ -n "$mirror" ] || { echo "no Debian mirror found in apt's sources" >&2; exit 1; }
rootfs=$(mktemp -d /var/tmp/compositor-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm from $mirror"
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
# What a -slim image leaves out: docs, man pages, apt lists.
rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
tar -C "$rootfs" -c . | $PODMAN import - "$IMAGE" >/dev/null
echo "made $IMAGE"
