#!/usr/bin/env bash
# Build the fedcifar image with podman: docker/build-image.sh [TAG]   (default localhost/fedcifar:latest)
#
# Reused between builds (outside the repository or as podman images, never committed):
#   $BASE_IMAGE (default localhost/fedcifar-base:bookworm)  debootstrap base, docker/base-image.sh
#   ~/.cache/fedcifar/wheelhouse                             the wheels, docker/wheelhouse.py
#   localhost/fedcifar-deps:<pins hash>                      the Dockerfile's `deps` stage
# BASE_IMAGE=python:3.11-slim works too where a registry is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/docker/containers.conf}"
PYTHON="${PYTHON:-.venv/bin/python}"
BASE_IMAGE="${BASE_IMAGE:-localhost/fedcifar-base:bookworm}"
TAG="${1:-localhost/fedcifar:latest}"
t0=$SECONDS
step() { echo "build-image [$((SECONDS - t0))s] $*"; }

if [[ "$BASE_IMAGE" == localhost/fedcifar-base:* ]]; then
    step "base image"
    docker/base-image.sh "$BASE_IMAGE"
fi

step "wheelhouse"
"$PYTHON" docker/wheelhouse.py ${WHEELHOUSE_PIP_OPTIONS:+-- $WHEELHOUSE_PIP_OPTIONS}

base_id="$(podman image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || echo "$BASE_IMAGE")"
deps_tag="localhost/fedcifar-deps:$( (cat build/wheelhouse/requirements.txt Dockerfile; echo "$base_id") | sha256sum | cut -c1-12)"
if podman image exists "$deps_tag"; then
    step "dependency layers: reusing $deps_tag"
else
    step "dependency layers: building $deps_tag (torch: several minutes)"
    podman build --format docker --layers --target deps --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$deps_tag" . \
        | grep -E '^(STEP|COMMIT|Successfully)' || true
    podman image exists "$deps_tag"
    for old in $(podman images --format '{{.Repository}}:{{.Tag}}' localhost/fedcifar-deps); do
        [ "$old" = "$deps_tag" ] || podman rmi "$old" >/dev/null 2>&1 || true
    done
fi

echo "$deps_tag" >build/deps-image.txt  # for docker/build-flower-image.sh, which builds on it
step "image $TAG"
# --format docker keeps the HEALTHCHECK (the OCI image format has no field for it).
podman build --format docker --layers --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$TAG" . \
    | grep -E '^(STEP|COMMIT|Successfully)' || true
podman image exists "$TAG"
step "built $TAG: $(podman image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.2f GB", $1/1e9}')"
