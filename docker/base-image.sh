#!/usr/bin/env bash
# The local base image for machines without a registry: Debian bookworm (minbase) with its
# python3 (3.11), made with debootstrap and imported into podman. Built once; later runs find
# the tag and reuse it. Usage: docker/base-image.sh [TAG]
set -euo pipefail
TAG="${1:-localhost/fedcifar-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if podman image exists "$TAG"; then
    echo "base image: reusing $TAG"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "base image: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
rootfs="$(mktemp -d /var/tmp/fedcifar-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "base image: debootstrap bookworm into $rootfs (a few minutes, once)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$MIRROR" >/dev/null
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
echo "base image: built $TAG"
